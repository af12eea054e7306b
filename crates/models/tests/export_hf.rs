//! `Pretrained::save_hf` writes a directory transformers, vLLM and llama.cpp's converter pick the
//! right class from, and that loads back to the same logits.
#![allow(clippy::unwrap_used)]
mod common;
use common::{fixtures, max_abs_diff};
use kiln_models::{DecoderInput, Pretrained, default_device};

/// The tiny Llama (transformers' own checkpoint, no `architectures` key removed) with a
/// tokenizer copied in, as a model directory.
fn tiny_llama_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny/llama");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    // As a GGUF-derived config: no class name, the old dtype key.
    config.as_object_mut().unwrap().remove("architectures");
    config["torch_dtype"] = serde_json::json!("float32");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let tok = fixtures().join("eval/tokenizer.json");
    std::fs::copy(tok, dir.path().join("tokenizer.json")).unwrap();
    dir
}

#[test]
fn merged_export_names_its_class_and_dtype_and_loads_back_to_the_same_logits() {
    let device = default_device();
    let src = tiny_llama_dir();
    let lm = Pretrained::load(src.path(), &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    lm.save_hf(out.path()).unwrap();

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["architectures"],
        serde_json::json!(["LlamaForCausalLM"])
    );
    assert_eq!(config["dtype"], "float32");
    assert!(config.get("torch_dtype").is_none(), "{config}");

    let back = Pretrained::load(out.path(), &device).unwrap();
    let ids = vec![1u32, 5, 9, 2, 7, 3];
    let input = DecoderInput::new(ids.clone(), 1, ids.len());
    let logits = |lm: &Pretrained| -> Vec<f32> {
        lm.model
            .forward(&input)
            .unwrap()
            .into_data()
            .try_into_vec()
            .unwrap()
    };
    let (want, got) = (logits(&lm), logits(&back));
    assert_eq!(got.len(), want.len());
    // f32 weights written and read as f32: the same numbers.
    assert_eq!(max_abs_diff(&got, &want), 0.0);
}

/// A model with an active, unmerged adapter is written merged (one layer at a time), and the file
/// is valid safetensors: the `safetensors` crate reads it, and it loads back to the adapted
/// model's logits.
#[test]
fn an_active_adapter_is_merged_as_it_is_written() {
    use kiln_lora::{InitLoraWeights, LoraConfig, LoraModel, TargetModules};
    let device = default_device();
    let src = tiny_llama_dir();
    let mut lm = Pretrained::load(src.path(), &device).unwrap();
    let mut config = LoraConfig::new(
        4,
        8.0,
        TargetModules::Names(vec!["q_proj".into(), "down_proj".into()]),
    );
    config.init_lora_weights = InitLoraWeights::Random;
    device.seed(3);
    let tuned = LoraModel::with_adapter(lm.model, "default", config).unwrap();
    lm.model = tuned.into_inner();
    let out = tempfile::tempdir().unwrap();
    lm.save_hf(out.path()).unwrap();
    let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        st.names()
            .contains(&"model.layers.0.self_attn.q_proj.weight")
    );
    assert!(!st.names().iter().any(|n| n.contains("lora")));

    let ids = vec![1u32, 5, 9, 2, 7, 3];
    let input = DecoderInput::new(ids.clone(), 1, ids.len());
    let logits = |m: &kiln_models::CausalLm| -> Vec<f32> {
        m.forward(&input)
            .unwrap()
            .into_data()
            .try_into_vec()
            .unwrap()
    };
    let back = Pretrained::load(out.path(), &device).unwrap();
    let base = Pretrained::load(src.path(), &device).unwrap();
    let (adapted, merged, plain) = (logits(&lm.model), logits(&back.model), logits(&base.model));
    assert!(max_abs_diff(&merged, &adapted) <= 1e-5);
    assert!(
        max_abs_diff(&plain, &adapted) > 1e-3,
        "the adapter changes the logits"
    );
}
