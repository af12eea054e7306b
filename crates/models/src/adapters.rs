//! The decoder as a target for LoRA adapters: a walk over its projections and other parameters
//! under their Hugging Face module paths, so PEFT keys line up with no rename table.
use crate::decoder::CausalLm;
use kiln_lora::LoraLinear;
use kiln_lora::target::{AdapterTarget, OtherParam, OtherParamMut};

impl AdapterTarget for CausalLm {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        for (i, layer) in self.model.layers.iter().enumerate() {
            let a = &layer.self_attn;
            for (name, lin) in a.input_projections() {
                f(&format!("model.layers.{i}.self_attn.{name}"), lin);
            }
            f(&format!("model.layers.{i}.self_attn.o_proj"), &a.o_proj);
            for (name, lin) in layer.mlp.projections() {
                f(&format!("model.layers.{i}.mlp.{name}"), lin);
            }
        }
        if let Some(head) = &self.lm_head {
            f("lm_head", head);
        }
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            for (name, lin) in a.input_projections_mut() {
                f(&format!("model.layers.{i}.self_attn.{name}"), lin);
            }
            f(&format!("model.layers.{i}.self_attn.o_proj"), &mut a.o_proj);
            for (name, lin) in layer.mlp.projections_mut() {
                f(&format!("model.layers.{i}.mlp.{name}"), lin);
            }
        }
        if let Some(head) = &mut self.lm_head {
            f("lm_head", head);
        }
    }

    fn visit_other_params(&self, f: &mut dyn FnMut(&str, &str, OtherParam<'_>)) {
        f(
            "model.embed_tokens",
            "weight",
            OtherParam::Matrix(&self.model.embed_tokens),
        );
        for (i, layer) in self.model.layers.iter().enumerate() {
            for (name, norm) in layer.norms() {
                f(
                    &format!("model.layers.{i}.{name}"),
                    "weight",
                    OtherParam::Vector(&norm.weight),
                );
            }
        }
        f(
            "model.norm",
            "weight",
            OtherParam::Vector(&self.model.norm.weight),
        );
    }

    fn visit_other_params_mut(&mut self, f: &mut dyn FnMut(&str, &str, OtherParamMut<'_>)) {
        f(
            "model.embed_tokens",
            "weight",
            OtherParamMut::Matrix(&mut self.model.embed_tokens),
        );
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            for (name, norm) in layer.norms_mut() {
                f(
                    &format!("model.layers.{i}.{name}"),
                    "weight",
                    OtherParamMut::Vector(&mut norm.weight),
                );
            }
        }
        f(
            "model.norm",
            "weight",
            OtherParamMut::Vector(&mut self.model.norm.weight),
        );
    }

    fn output_layer(&self) -> Option<&str> {
        self.lm_head.as_ref().map(|_| "lm_head")
    }
}
