//! PEFT files: key names, layouts, round trip, config parsing, hot swap, errors.
#![allow(clippy::unwrap_used)]
use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use kiln_lora::{
    CONFIG_FILE, HostTensor, LoraConfig, LoraError, LoraModel, TargetModules, WEIGHTS_FILE,
    read_safetensors, write_safetensors,
};

use crate::fake::{Q, Tiny, V, host, input};
use crate::model::train_b;

fn config(dora: bool) -> LoraConfig {
    let mut c = LoraConfig::new(
        2,
        4.0,
        TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    );
    c.use_dora = dora;
    c.modules_to_save = Some(vec!["embed_tokens".into()]);
    c
}

fn trained(dora: bool) -> LoraModel<Tiny> {
    let device = Device::default();
    let mut m = LoraModel::with_adapter(Tiny::new(&device), "default", config(dora)).unwrap();
    train_b(&mut m, "default", &device);
    m
}

#[test]
fn saved_keys_shapes_and_metadata_are_peft_s() {
    let dir = tempfile::tempdir().unwrap();
    trained(true).save_adapter(dir.path(), "default").unwrap();
    let t = read_safetensors(&dir.path().join(WEIGHTS_FILE)).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = t
        .iter()
        .map(|(k, v)| (k.clone(), v.shape.clone()))
        .collect();
    let p = "base_model.model.";
    let expected: Vec<(String, Vec<usize>)> = vec![
        (format!("{p}model.embed_tokens.weight"), vec![10, 6]),
        (format!("{p}{Q}.lora_A.weight"), vec![2, 6]),
        (format!("{p}{Q}.lora_B.weight"), vec![6, 2]),
        (format!("{p}{Q}.lora_magnitude_vector"), vec![6]),
        (format!("{p}{V}.lora_A.weight"), vec![2, 6]),
        (format!("{p}{V}.lora_B.weight"), vec![4, 2]),
        (format!("{p}{V}.lora_magnitude_vector"), vec![4]),
    ];
    assert_eq!(shapes, expected);
    let bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let fmt = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("format").cloned());
    assert_eq!(fmt.as_deref(), Some("pt"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(
        json["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    assert_eq!(json["init_lora_weights"], true);
}

#[test]
fn save_then_load_gives_identical_outputs() {
    let device = Device::default();
    for dora in [false, true] {
        let m = trained(dora);
        let dir = tempfile::tempdir().unwrap();
        m.save_adapter(dir.path(), "default").unwrap();
        let mut fresh = LoraModel::new(Tiny::new(&device));
        fresh.load_adapter(dir.path(), "default").unwrap();
        let x = input(&device);
        assert_eq!(
            host(m.model.forward(x.clone())),
            host(fresh.model.forward(x)),
            "dora={dora}"
        );
        assert_eq!(fresh.config("default"), m.config("default"));
    }
}

#[test]
fn hot_swap_replaces_weights_in_place() {
    let device = Device::default();
    let a = trained(false);
    let b = trained(false);
    let dir = tempfile::tempdir().unwrap();
    b.save_adapter(dir.path(), "default").unwrap();
    let mut m = a;
    let id = m.model.model_q_id();
    m.hot_swap_adapter(dir.path(), "default").unwrap();
    assert_eq!(id, m.model.model_q_id(), "parameter ids are kept");
    let x = input(&device);
    assert_eq!(host(m.model.forward(x.clone())), host(b.model.forward(x)));
}

trait QId {
    fn model_q_id(&self) -> String;
}
impl QId for Tiny {
    fn model_q_id(&self) -> String {
        self.q_proj
            .adapter("default")
            .unwrap()
            .lora_a
            .id
            .to_string()
    }
}

/// A config as PEFT 0.21 writes it (fields kiln does not know included).
const PEFT_CONFIG: &str = r#"{
  "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null,
  "auto_mapping": {"base_model_class": "LlamaForCausalLM"},
  "base_model_name_or_path": null, "bias": "lora_only", "corda_config": null,
  "exclude_modules": null, "fan_in_fan_out": false, "inference_mode": true,
  "init_lora_weights": "gaussian", "layers_pattern": null, "layers_to_transform": null,
  "loftq_config": {}, "lora_alpha": 4, "lora_bias": false, "lora_dropout": 0.05,
  "megatron_core": "megatron.core", "modules_to_save": ["lm_head", "embed_tokens"],
  "peft_type": "LORA", "peft_version": "0.21.2", "r": 2, "rank_pattern": {"v_proj": 3},
  "target_modules": ["v_proj", "q_proj"], "task_type": null, "use_dora": true,
  "use_qalora": false, "use_rslora": true, "qalora_group_size": 16
}"#;

#[test]
fn peft_config_parses_and_keeps_unknown_fields() {
    let c = LoraConfig::from_json_str(PEFT_CONFIG, Path::new("x.json")).unwrap();
    assert_eq!(c.r, 2);
    assert_eq!(c.rank_pattern, vec![("v_proj".to_string(), 3)]);
    assert_eq!(c.init_lora_weights, kiln_lora::InitLoraWeights::Gaussian);
    assert_eq!(c.bias, kiln_lora::Bias::LoraOnly);
    assert!(c.use_dora && c.use_rslora);
    let r = c.module_rank("model.layers.0.self_attn.v_proj");
    assert_eq!((r.r, r.alpha), (3, 4.0));
    assert!((r.scale - 4.0 / 3f64.sqrt()).abs() < 1e-12);
    assert_eq!(c.extra["megatron_core"], "megatron.core");
    assert_eq!(c.extra["qalora_group_size"], 16);
    let back: serde_json::Value = serde_json::from_str(&c.to_json_string()).unwrap();
    assert_eq!(back["qalora_group_size"], 16);
    assert_eq!(back["rank_pattern"], serde_json::json!({"v_proj": 3}));
    let again = LoraConfig::from_json_str(&c.to_json_string(), Path::new("x.json")).unwrap();
    assert_eq!(again, c);
}

#[test]
fn config_errors_name_the_field_or_type() {
    let p = Path::new("adapter_config.json");
    let loha = PEFT_CONFIG.replace("\"LORA\"", "\"LOHA\"");
    assert!(
        matches!(LoraConfig::from_json_str(&loha, p), Err(LoraError::UnsupportedPeftType(t)) if t == "LOHA")
    );
    let fan = PEFT_CONFIG.replace("\"fan_in_fan_out\": false", "\"fan_in_fan_out\": true");
    assert!(
        matches!(LoraConfig::from_json_str(&fan, p), Err(LoraError::Config { field, .. }) if field == "fan_in_fan_out")
    );
    let err = LoraConfig::from_json_str("{\"r\": \"x\"}", p).unwrap_err();
    assert!(err.to_string().starts_with("adapter_config.json:"), "{err}");
}

fn saved(dir: &Path) -> BTreeMap<String, HostTensor> {
    trained(false).save_adapter(dir, "default").unwrap();
    read_safetensors(&dir.join(WEIGHTS_FILE)).unwrap()
}

#[test]
fn file_mismatches_are_typed_errors_naming_key_and_shapes() {
    let device = Device::default();
    let dir = tempfile::tempdir().unwrap();
    let good = saved(dir.path());
    let qa = format!("base_model.model.{Q}.lora_A.weight");

    let mut t = good.clone();
    t.insert(
        qa.clone(),
        HostTensor {
            shape: vec![2, 5],
            data: vec![0.0; 10],
        },
    );
    write_safetensors(&dir.path().join(WEIGHTS_FILE), &t).unwrap();
    let err = LoraModel::new(Tiny::new(&device))
        .load_adapter(dir.path(), "x")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("`{qa}`: shape [2, 5], expected [2, 6]")
    );

    let mut t = good.clone();
    t.remove(&qa);
    write_safetensors(&dir.path().join(WEIGHTS_FILE), &t).unwrap();
    let err = LoraModel::new(Tiny::new(&device))
        .load_adapter(dir.path(), "x")
        .unwrap_err();
    assert!(
        matches!(err, LoraError::MissingKey { ref key, .. } if *key == qa),
        "{err}"
    );

    let mut t = good.clone();
    t.insert(
        "base_model.model.lm_head.lora_A.weight".into(),
        HostTensor {
            shape: vec![2, 4],
            data: vec![0.0; 8],
        },
    );
    write_safetensors(&dir.path().join(WEIGHTS_FILE), &t).unwrap();
    let err = LoraModel::new(Tiny::new(&device))
        .load_adapter(dir.path(), "x")
        .unwrap_err();
    assert!(
        matches!(err, LoraError::UnexpectedKey { ref key, .. } if key == "base_model.model.lm_head.lora_A.weight"),
        "{err}"
    );

    std::fs::write(dir.path().join(WEIGHTS_FILE), b"not safetensors").unwrap();
    let err = LoraModel::new(Tiny::new(&device))
        .load_adapter(dir.path(), "x")
        .unwrap_err();
    assert!(matches!(err, LoraError::Safetensors { .. }), "{err}");
}
