//! The decoder as a target for LoRA adapters: a walk over its projections and other parameters
//! under their Hugging Face module paths, so PEFT keys line up with no rename table.
use crate::decoder::CausalLm;
use kiln_lora::LoraLinear;
use kiln_lora::target::{AdapterTarget, OtherParam, OtherParamMut};

const ATTN: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
const MLP: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

impl AdapterTarget for CausalLm {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        for (i, layer) in self.model.layers.iter().enumerate() {
            let a = &layer.self_attn;
            for (name, lin) in ATTN
                .iter()
                .zip([&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj])
            {
                f(&format!("model.layers.{i}.self_attn.{name}"), lin);
            }
            let m = &layer.mlp;
            for (name, lin) in MLP.iter().zip([&m.gate_proj, &m.up_proj, &m.down_proj]) {
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
            for (name, lin) in
                ATTN.iter()
                    .zip([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj])
            {
                f(&format!("model.layers.{i}.self_attn.{name}"), lin);
            }
            let m = &mut layer.mlp;
            for (name, lin) in MLP
                .iter()
                .zip([&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj])
            {
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
            f(
                &format!("model.layers.{i}.input_layernorm"),
                "weight",
                OtherParam::Vector(&layer.input_layernorm.weight),
            );
            f(
                &format!("model.layers.{i}.post_attention_layernorm"),
                "weight",
                OtherParam::Vector(&layer.post_attention_layernorm.weight),
            );
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
            f(
                &format!("model.layers.{i}.input_layernorm"),
                "weight",
                OtherParamMut::Vector(&mut layer.input_layernorm.weight),
            );
            f(
                &format!("model.layers.{i}.post_attention_layernorm"),
                "weight",
                OtherParamMut::Vector(&mut layer.post_attention_layernorm.weight),
            );
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
