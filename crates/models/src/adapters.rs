//! The decoder as a target for LoRA adapters: a walk over its projections and other parameters
//! under their Hugging Face module paths, so PEFT keys line up with no rename table. The paths
//! are the checkpoint's: `model.layers.N…` for a text model, `model.language_model.layers.N…`
//! for the language model of a multimodal `gemma3` checkpoint ([`ModuleLayout`]).
use crate::config::ModuleLayout;
use crate::decoder::CausalLm;
use crate::multimodal::{LEGACY_ADAPTER_PREFIXES, VISION_PREFIXES};
use kiln_lora::LoraLinear;
use kiln_lora::target::{AdapterTarget, OtherParam, OtherParamMut};

impl AdapterTarget for CausalLm {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        let body = self.config.layout.body();
        for (i, layer) in self.model.layers.iter().enumerate() {
            let a = &layer.self_attn;
            for (name, lin) in a.input_projections() {
                f(&format!("{body}.layers.{i}.self_attn.{name}"), lin);
            }
            f(&format!("{body}.layers.{i}.self_attn.o_proj"), &a.o_proj);
            for (name, lin) in layer.mlp.projections() {
                f(&format!("{body}.layers.{i}.mlp.{name}"), lin);
            }
        }
        if let Some(head) = &self.lm_head {
            f("lm_head", head);
        }
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        let body = self.config.layout.body();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            for (name, lin) in a.input_projections_mut() {
                f(&format!("{body}.layers.{i}.self_attn.{name}"), lin);
            }
            f(
                &format!("{body}.layers.{i}.self_attn.o_proj"),
                &mut a.o_proj,
            );
            for (name, lin) in layer.mlp.projections_mut() {
                f(&format!("{body}.layers.{i}.mlp.{name}"), lin);
            }
        }
        if let Some(head) = &mut self.lm_head {
            f("lm_head", head);
        }
    }

    fn visit_other_params(&self, f: &mut dyn FnMut(&str, &str, OtherParam<'_>)) {
        let body = self.config.layout.body();
        f(
            &format!("{body}.embed_tokens"),
            "weight",
            OtherParam::Table(&self.model.embed_tokens),
        );
        for (i, layer) in self.model.layers.iter().enumerate() {
            for (name, norm) in layer.norms() {
                f(
                    &format!("{body}.layers.{i}.{name}"),
                    "weight",
                    OtherParam::Vector(&norm.weight),
                );
            }
        }
        f(
            &format!("{body}.norm"),
            "weight",
            OtherParam::Vector(&self.model.norm.weight),
        );
    }

    fn visit_other_params_mut(&mut self, f: &mut dyn FnMut(&str, &str, OtherParamMut<'_>)) {
        let body = self.config.layout.body();
        f(
            &format!("{body}.embed_tokens"),
            "weight",
            OtherParamMut::Table(&mut self.model.embed_tokens),
        );
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            for (name, norm) in layer.norms_mut() {
                f(
                    &format!("{body}.layers.{i}.{name}"),
                    "weight",
                    OtherParamMut::Vector(&mut norm.weight),
                );
            }
        }
        f(
            &format!("{body}.norm"),
            "weight",
            OtherParamMut::Vector(&mut self.model.norm.weight),
        );
    }

    fn output_layer(&self) -> Option<&str> {
        self.lm_head.as_ref().map(|_| "lm_head")
    }

    fn legacy_path_prefixes(&self) -> &[(&'static str, &'static str)] {
        match self.config.layout {
            ModuleLayout::CausalLm => &[],
            ModuleLayout::Gemma3Multimodal => &LEGACY_ADAPTER_PREFIXES,
        }
    }

    fn skipped_path_prefixes(&self) -> &[&'static str] {
        match self.config.layout {
            ModuleLayout::CausalLm => &[],
            ModuleLayout::Gemma3Multimodal => &VISION_PREFIXES,
        }
    }
}

impl CausalLm {
    /// The model for full fine-tuning: every matrix a dense f32 parameter and every parameter
    /// trainable. A frozen matrix (a GGUF's blocks, f16/bf16 kept as stored, NF4/FP4/int8) is
    /// dequantized first; `set_require_grad(true)` alone would leave it frozen and train only
    /// the norms (found in the kill -9 campaign: `sft --full` on the stored SmolLM2 GGUF trained
    /// 35,136 of 135 M parameters).
    pub fn into_full_training(mut self) -> Self {
        use burn::module::Module;
        self.visit_linears_mut(&mut |_, l| l.weight.densify(kiln_lora::Layout::Linear));
        self.model.embed_tokens.densify(kiln_lora::Layout::Table);
        self.set_require_grad(true)
    }
}
