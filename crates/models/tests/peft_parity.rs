//! PEFT parity on the tiny llama / mistral / qwen2 checkpoints: adapters written by PEFT
//! (`tools/fixtures/generate.py`, `fixtures/tiny/<name>/peft/{lora,rslora,dora}`) give PEFT's
//! logits and loss in kiln, merged and unmerged; one AdamW step matches PyTorch's.
#![allow(clippy::unwrap_used)]
mod common;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use common::{Reference, fixtures, max_abs_diff};
use kiln_lora::{
    AdapterTarget, LoraLinear, LoraModel, OtherParam, OtherParamMut, read_safetensors,
};
use kiln_models::{
    CausalLm, DecoderConfig, DecoderInput, SafetensorsWeights, build_causal_lm, causal_lm_loss,
    default_device,
};

/// The decoder seen through `AdapterTarget` (a newtype exposing only the embedding and final norm
/// as other parameters; the linear walk is kiln-models' own `impl AdapterTarget for CausalLm`).
#[derive(Module, Debug)]
struct Lm {
    inner: CausalLm,
}

impl Lm {
    fn forward(&self, input: &DecoderInput) -> kiln_models::Result<Tensor<3>> {
        self.inner.forward(input)
    }
}

impl AdapterTarget for Lm {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        self.inner.visit_linears(f);
    }
    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        self.inner.visit_linears_mut(f);
    }
    fn visit_other_params(&self, f: &mut dyn FnMut(&str, &str, OtherParam<'_>)) {
        f(
            "model.embed_tokens",
            "weight",
            OtherParam::Table(&self.inner.model.embed_tokens),
        );
        f(
            "model.norm",
            "weight",
            OtherParam::Vector(&self.inner.model.norm.weight),
        );
    }
    fn visit_other_params_mut(&mut self, f: &mut dyn FnMut(&str, &str, OtherParamMut<'_>)) {
        f(
            "model.embed_tokens",
            "weight",
            OtherParamMut::Table(&mut self.inner.model.embed_tokens),
        );
        f(
            "model.norm",
            "weight",
            OtherParamMut::Vector(&mut self.inner.model.norm.weight),
        );
    }
    fn output_layer(&self) -> Option<&str> {
        self.inner.lm_head.as_ref().map(|_| "lm_head")
    }
}

struct Case {
    model: Lm,
    input: DecoderInput,
    mask: Vec<u8>,
    labels: Vec<i64>,
    /// Kept open for the case's lifetime (the reference file of the base model).
    #[allow(dead_code)]
    base: Reference,
}

fn case(name: &str, device: &Device) -> Case {
    let dir = fixtures().join("tiny").join(name);
    let base = Reference::open(dir.join("expected.safetensors"));
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let inner = build_causal_lm(&config, &SafetensorsWeights::open(&dir).unwrap(), device).unwrap();
    let model = Lm { inner };
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
    let labels = base.i64("labels");
    Case {
        model,
        input,
        mask,
        labels,
        base,
    }
}

/// Logits at real (non-padded) positions.
fn real(logits: Tensor<3>, mask: &[u8]) -> Vec<f32> {
    let v = logits.dims()[2];
    let all: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec().unwrap();
    mask.iter()
        .enumerate()
        .filter(|(_, m)| **m == 1)
        .flat_map(|(k, _)| all[k * v..(k + 1) * v].to_vec())
        .collect()
}

fn check(name: &str, kind: &str) {
    let device = default_device();
    let c = case(name, &device);
    let dir = fixtures().join("tiny").join(name).join("peft").join(kind);
    let want = Reference::open(dir.join("expected.safetensors"));
    let base_logits = real(c.model.forward(&c.input).unwrap(), &c.mask);
    let mut m = LoraModel::new(c.model.clone());
    m.load_adapter(&dir, "default").unwrap();

    let logits = m.model.forward(&c.input).unwrap();
    let loss: f32 = causal_lm_loss(logits.clone(), &c.labels)
        .unwrap()
        .into_scalar();
    let got = real(logits, &c.mask);
    let d = max_abs_diff(&got, &real_ref(&want, "logits", &c));
    assert!(d <= 1e-5, "{name}/{kind}: max |Δ logit| vs PEFT = {d}");
    let want_loss = want.f32("loss")[0];
    assert!(
        (loss - want_loss).abs() <= 1e-5,
        "{name}/{kind}: loss {loss} vs {want_loss}"
    );

    m.merge().unwrap();
    let merged = real(m.model.forward(&c.input).unwrap(), &c.mask);
    let d = max_abs_diff(&merged, &got);
    assert!(d <= 1e-5, "{name}/{kind}: merged vs unmerged {d}");
    let d = max_abs_diff(&merged, &real_ref(&want, "logits_merged", &c));
    assert!(d <= 1e-5, "{name}/{kind}: merged vs PEFT merged {d}");
    m.unmerge();
    m.disable_adapters();
    let d = max_abs_diff(
        &real(m.model.forward(&c.input).unwrap(), &c.mask),
        &base_logits,
    );
    assert!(d <= 1e-5, "{name}/{kind}: unmerged + disabled vs base {d}");

    // kiln writes the adapter back; it reloads to the same logits.
    let out = tempfile::tempdir().unwrap();
    m.enable_adapters();
    m.save_adapter(out.path(), "default").unwrap();
    let file = read_safetensors(&out.path().join(kiln_lora::WEIGHTS_FILE)).unwrap();
    let peft = read_safetensors(&dir.join(kiln_lora::WEIGHTS_FILE)).unwrap();
    assert_eq!(
        file.keys().collect::<Vec<_>>(),
        peft.keys().collect::<Vec<_>>()
    );
    for (k, t) in &file {
        assert_eq!(t.shape, peft[k].shape, "{k}");
        assert!(
            max_abs_diff(&t.data, &peft[k].data) == 0.0,
            "{k} changed on the round trip"
        );
    }
    if let Ok(target) = std::env::var("KILN_WRITE_ADAPTER_DIR") {
        m.save_adapter(
            &std::path::Path::new(&target).join(name).join(kind),
            "default",
        )
        .unwrap();
    }
}

fn real_ref(r: &Reference, key: &str, c: &Case) -> Vec<f32> {
    let all = r.f32(key);
    let v = all.len() / c.mask.len();
    c.mask
        .iter()
        .enumerate()
        .filter(|(_, m)| **m == 1)
        .flat_map(|(k, _)| all[k * v..(k + 1) * v].to_vec())
        .collect()
}

macro_rules! parity {
    ($($test:ident: $name:literal $kind:literal,)*) => {$(
        #[test]
        fn $test() {
            check($name, $kind);
        }
    )*};
}

parity! {
    llama_lora: "llama" "lora",
    llama_rslora: "llama" "rslora",
    llama_dora: "llama" "dora",
    mistral_lora: "mistral" "lora",
    mistral_rslora: "mistral" "rslora",
    mistral_dora: "mistral" "dora",
    qwen2_lora: "qwen2" "lora",
    qwen2_rslora: "qwen2" "rslora",
    qwen2_dora: "qwen2" "dora",
}

#[test]
fn adamw_step_matches_pytorch() {
    let device = default_device().autodiff();
    let c = case("llama", &device);
    let dir = fixtures().join("tiny/llama/peft/lora");
    let step: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("train_step.json")).unwrap())
            .unwrap();
    let mut m = LoraModel::new(c.model.clone());
    m.load_adapter(&dir, "default").unwrap();
    let mut frozen = Vec::new();
    m.model
        .visit_linears(&mut |_, l| frozen.push(l.dense_weight().into_data()));

    let loss = causal_lm_loss(m.model.forward(&c.input).unwrap(), &c.labels).unwrap();
    let before: f32 = loss.clone().into_scalar();
    let want = step["loss_before"].as_f64().unwrap() as f32;
    assert!(
        (before - want).abs() <= 1e-5,
        "loss before {before} vs {want}"
    );
    let grads = loss.backward();
    let mut checked = 0;
    m.model.visit_linears(&mut |path, l| {
        assert!(
            l.weight.as_dense().and_then(|w| w.grad(&grads)).is_none(),
            "{path}: gradient kept for the frozen base"
        );
        if let Some(a) = l.adapter("default") {
            for (suffix, g) in [
                ("lora_A.weight", a.lora_a.grad(&grads)),
                ("lora_B.weight", a.lora_b.grad(&grads)),
            ] {
                let key = format!("base_model.model.{path}.{suffix}");
                let norm: f32 = g.unwrap().square().sum().sqrt().into_scalar();
                let want = step["grad_norms"][&key].as_f64().unwrap() as f32;
                assert!(
                    (norm - want).abs() <= 1e-4 * want.abs(),
                    "{key}: grad norm {norm} vs {want}"
                );
                checked += 1;
            }
        }
    });
    assert_eq!(checked, step["grad_norms"].as_object().unwrap().len());
    let grads = GradientsParams::from_grads(grads, &m);
    let mut optim = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init();
    let m = optim.step(1e-3, m, grads);
    let after: f32 = causal_lm_loss(m.model.forward(&c.input).unwrap(), &c.labels)
        .unwrap()
        .into_scalar();
    let want = step["loss_after"].as_f64().unwrap() as f32;
    assert!((after - want).abs() <= 1e-5, "loss after {after} vs {want}");
    let mut i = 0;
    m.model.visit_linears(&mut |path, l| {
        assert_eq!(
            l.dense_weight().into_data(),
            frozen[i],
            "{path}: base weight changed"
        );
        i += 1;
    });
}
