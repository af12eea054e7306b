//! Adapters written by kiln load in PEFT with the same logits.
//!
//! `fixtures/kiln_written/<case>/` holds adapters this test wrote (LoRA and DoRA with random,
//! non-zero A and B on all seven projections of tiny llama / qwen2), the base's name (`base`),
//! and PEFT's logits with that adapter on the fixture batch (`peft_logits.safetensors`, written
//! by `python3 tools/fixtures/generate.py --check-kiln-adapter fixtures/kiln_written/<case>`,
//! which loads the directory with `PeftModel.from_pretrained`). The test checks that kiln still
//! writes exactly these files and that kiln's logits with them equal PEFT's (1e-5, non-padded
//! positions). `KILN_WRITE_GOLDEN=1 cargo test --test kiln_written_adapter` rewrites the adapter
//! files and then fails: PEFT's logits must be regenerated before the test can pass.
#![allow(clippy::unwrap_used)]
mod common;
use common::{Reference, fixtures, max_abs_diff};
use kiln_lora::{InitLoraWeights, LoraConfig, LoraModel, TargetModules, read_safetensors};
use kiln_models::{
    CausalLm, DecoderConfig, DecoderInput, SafetensorsWeights, build_causal_lm, default_device,
};

fn tiny(name: &str) -> (CausalLm, DecoderInput, Vec<u8>) {
    let dir = fixtures().join("tiny").join(name);
    let base = Reference::open(dir.join("expected.safetensors"));
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let device = default_device();
    let model =
        build_causal_lm(&config, &SafetensorsWeights::open(&dir).unwrap(), &device).unwrap();
    let [b, t] = <[usize; 2]>::try_from(base.shape("input_ids")).unwrap();
    let ids: Vec<u32> = base.i64("input_ids").iter().map(|&i| i as u32).collect();
    let mask: Vec<u8> = base
        .i64("attention_mask")
        .iter()
        .map(|&m| m as u8)
        .collect();
    let input = DecoderInput::new(ids, b, t)
        .with_attention_mask(mask.clone())
        .with_position_ids(base.i64("position_ids"));
    (model, input, mask)
}

fn host(t: burn::tensor::Tensor<3>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn kiln_written_adapters_are_stable_and_checked_by_peft() {
    let write = std::env::var("KILN_WRITE_GOLDEN").is_ok();
    for (case, base, dora, seed) in [
        ("llama_lora", "llama", false, 5),
        ("qwen2_dora", "qwen2", true, 6),
    ] {
        let (model, input, mask) = tiny(base);
        let mut config = LoraConfig::new(
            4,
            8.0,
            TargetModules::Names(
                [
                    "q_proj",
                    "k_proj",
                    "v_proj",
                    "o_proj",
                    "gate_proj",
                    "up_proj",
                    "down_proj",
                ]
                .map(String::from)
                .to_vec(),
            ),
        );
        config.use_dora = dora;
        // Random B as well as A, so that the adapter changes the logits.
        config.init_lora_weights = InitLoraWeights::Random;
        default_device().seed(seed);
        kiln_lora::manual_seed(seed);
        let lora = LoraModel::with_adapter(model, "default", config).unwrap();
        let logits = lora.model.forward(&input).unwrap();
        let dims = logits.dims().to_vec();
        let logits = host(logits);
        let golden = fixtures().join("kiln_written").join(case);
        let tmp = tempfile::tempdir().unwrap();
        let dir = if write {
            golden.clone()
        } else {
            tmp.path().to_path_buf()
        };
        std::fs::create_dir_all(&dir).unwrap();
        lora.save_adapter(&dir, "default").unwrap();
        if write {
            std::fs::write(dir.join("base"), format!("{base}\n")).unwrap();
            let _ = std::fs::remove_file(dir.join("peft_logits.safetensors"));
            continue;
        }
        // Same config and tensors as the committed files PEFT was checked on.
        let read_json = |p: std::path::PathBuf| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        assert_eq!(
            read_json(dir.join("adapter_config.json")),
            read_json(golden.join("adapter_config.json")),
            "{case}: adapter_config.json changed"
        );
        let ours = read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
        let theirs = read_safetensors(&golden.join("adapter_model.safetensors")).unwrap();
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{case}: tensor names"
        );
        for (k, t) in &ours {
            assert_eq!(t.shape, theirs[k].shape, "{case}: {k}");
            assert!(
                max_abs_diff(&t.data, &theirs[k].data) == 0.0,
                "{case}: {k} values"
            );
        }
        // PEFT's logits with the same adapter, on the positions attention reads.
        let peft = Reference::open(golden.join("peft_logits.safetensors"));
        assert_eq!(peft.shape("logits"), dims, "{case}");
        let want = peft.f32("logits");
        let vocab = dims[2];
        let diff = mask
            .iter()
            .enumerate()
            .filter(|(_, m)| **m == 1)
            .flat_map(|(pos, _)| pos * vocab..(pos + 1) * vocab)
            .map(|i| (logits[i] - want[i]).abs())
            .fold(0f32, f32::max);
        assert!(
            diff <= 1e-5,
            "{case}: kiln's logits differ from PEFT's by {diff}"
        );
        // And the adapter reloads into a fresh model with the same logits.
        let (fresh, _, _) = tiny(base);
        let mut reloaded = LoraModel::new(fresh);
        reloaded.load_adapter(&golden, "default").unwrap();
        let diff = max_abs_diff(&host(reloaded.model.forward(&input).unwrap()), &logits);
        assert!(diff <= 1e-5, "{case}: reloaded logits differ by {diff}");
    }
    assert!(
        !write,
        "adapters rewritten; now run `for d in fixtures/kiln_written/*/; do python3 \
         tools/fixtures/generate.py --check-kiln-adapter \"$d\"; done` and rerun without \
         KILN_WRITE_GOLDEN"
    );
}
