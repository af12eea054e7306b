//! The wgpu backend (Debian's software Vulkan, lavapipe, in CI) against the reference tools and
//! the CPU, on the tiny fixtures: forward logits (f32 checkpoints against transformers; NF4,
//! LLM.int8 and GGUF Q4_0 bases kept frozen against transformers + bitsandbytes and
//! transformers' GGUF loader), greedy generation, three LoRA steps on a dense and an NF4 base,
//! three full fine-tuning steps, and a model loaded on the CPU and moved to wgpu.
//!
//! One seed gives one run on both backends: the adapters are created from the same seed on each
//! device (their initial values are drawn on the host, `kiln_lora::manual_seed`), nothing is
//! copied from one run to the other. The CPU trains by its default path, kiln's fused backward
//! (checked: every micro-batch fused), wgpu by burn's autodiff: two implementations of the
//! same gradients. Dropout is 0: its masks still come from each device's own generator.
//!
//! Built only with the `wgpu` and `cpu` features (`.ci/run` runs it).
#![allow(clippy::unwrap_used)]
mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use common::{batch, fixture, options, serial};
use kiln_lora::{InitLoraWeights, LoraConfig, LoraModel, TargetModules};
use kiln_models::{
    CausalLm, DecoderConfig, DecoderInput, GenerationConfig, Pretrained, Quantization,
    SafetensorsWeights, build_causal_lm_as, default_device, generate,
};
use kiln_train::params_to_host;
use kiln_train::{HostParams, MicroOutcome, Trainer};
use safetensors::SafeTensors;

/// Largest |Δ| allowed between wgpu and the CPU, and between either and a reference, for logits;
/// and between the two backends' losses and trained weights after three steps (a wrong gradient
/// moves a weight by about lr = 1e-3 per step).
const TOL: f32 = 1e-4;

fn gpu() -> Device {
    Device::wgpu(Default::default())
}

/// A tiny fixture checkpoint on `device`, its matrices as `q` says.
fn load(name: &str, q: Quantization, device: &Device) -> CausalLm {
    let dir = fixture(&format!("tiny/{name}"));
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = SafetensorsWeights::open(&dir).unwrap();
    build_causal_lm_as(&config, &weights, device, q).unwrap()
}

fn quantization(s: &str) -> Quantization {
    s.parse().unwrap()
}

fn host(t: Tensor<3>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Tensors of a reference file written by the fixture generators.
struct Reference(Vec<u8>);

impl Reference {
    fn open(rel: &str) -> Self {
        Self(std::fs::read(fixture(rel)).unwrap())
    }

    fn bytes(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let v = st.tensor(name).unwrap();
        (v.shape().to_vec(), v.data().to_vec())
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let (_, b) = self.bytes(name);
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn i64(&self, name: &str) -> Vec<i64> {
        let (_, b) = self.bytes(name);
        b.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// `input_ids` (`[b, t]`) as a decoder input, with the mask and positions when stored.
    fn input(&self, with_mask: bool) -> DecoderInput {
        let (shape, _) = self.bytes("input_ids");
        let ids = self.i64("input_ids").iter().map(|&i| i as u32).collect();
        let input = DecoderInput::new(ids, shape[0], shape[1]);
        if !with_mask {
            return input;
        }
        let mask = self
            .i64("attention_mask")
            .iter()
            .map(|&m| m as u8)
            .collect();
        input
            .with_attention_mask(mask)
            .with_position_ids(self.i64("position_ids"))
    }
}

/// Logits of the same model on wgpu and on the CPU: the two equal within [`TOL`]; returns
/// both (wgpu first) and prints the difference.
fn both(what: &str, make: impl Fn(&Device) -> CausalLm, input: &DecoderInput) -> [Vec<f32>; 2] {
    let on_gpu = host(make(&gpu()).forward(input).unwrap());
    let on_cpu = host(make(&default_device()).forward(input).unwrap());
    let d = max_diff(&on_gpu, &on_cpu);
    println!("{what}: max |Δ logit| wgpu vs cpu {d:.2e}");
    assert!(d <= TOL, "{what}: wgpu vs cpu {d}");
    [on_gpu, on_cpu]
}

/// transformers' logits of the f32 tiny checkpoints (`expected.safetensors`, real positions).
#[test]
fn forward_on_wgpu_equals_transformers_and_the_cpu() {
    for name in ["llama", "gemma2", "phi3"] {
        let r = Reference::open(&format!("tiny/{name}/expected.safetensors"));
        let input = r.input(true);
        let got = both(name, |d| load(name, Quantization::F32, d), &input);
        let want = r.f32("logits");
        let v = want.len() / r.i64("attention_mask").len();
        for (k, m) in r.i64("attention_mask").into_iter().enumerate() {
            if m == 0 {
                continue;
            }
            let span = k * v..(k + 1) * v;
            for (side, logits) in ["wgpu", "cpu"].iter().zip(&got) {
                let d = max_diff(&logits[span.clone()], &want[span.clone()]);
                assert!(d <= TOL, "{name} {side} position {k}: vs transformers {d}");
            }
        }
    }
}

/// Bases kept frozen in their storage format, against `fixtures/quantized/logits.safetensors`
/// (`tools/fixtures/quantized_models.py`: transformers + bitsandbytes quantizing at load, and
/// transformers' GGUF loader; every `stride`-th logit and the log-sum-exp of each position).
/// The GGUF keeps its embedding in blocks too: the lookup and the tied head run on the frozen
/// table.
#[test]
fn frozen_quantized_bases_on_wgpu_equal_bitsandbytes_gguf_and_the_cpu() {
    let r = Reference::open("quantized/logits.safetensors");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("quantized/manifest.json")).unwrap())
            .unwrap();
    let stride = manifest["stride"].as_u64().unwrap() as usize;
    let input = r.input(false);
    let gguf = |name: &str, d: &Device| -> CausalLm {
        let path = fixture(&format!("quantized/tiny_llama_{name}.gguf"));
        Pretrained::load_as(&path, d, Quantization::Stored)
            .unwrap()
            .model
    };
    let with_peft_lora = |model: CausalLm| -> CausalLm {
        let mut m = LoraModel::new(model);
        m.load_adapter(&fixture("tiny/llama/peft/lora"), "default")
            .unwrap();
        m.into_inner()
    };
    type Make<'a> = Box<dyn Fn(&Device) -> CausalLm + 'a>;
    let cases: [(&str, Make<'_>); 5] = [
        (
            "llama.nf4",
            Box::new(|d: &Device| load("llama", quantization("nf4"), d)),
        ),
        (
            "gemma2.int8",
            Box::new(|d: &Device| load("gemma2", quantization("int8"), d)),
        ),
        ("gguf_q4_0", Box::new(|d: &Device| gguf("q4_0", d))),
        (
            "gguf_q4_0.lora",
            Box::new(|d: &Device| with_peft_lora(gguf("q4_0", d))),
        ),
        ("gguf_q8_0", Box::new(|d: &Device| gguf("q8_0", d))),
    ];
    for (case, make) in cases {
        let frozen = make(&gpu());
        let o_proj = &frozen.model.layers[0].self_attn.o_proj.weight;
        assert!(o_proj.as_frozen().is_some(), "{case}: o_proj frozen");
        let got = both(case, &make, &input);
        for (side, logits) in ["wgpu", "cpu"].iter().zip(got) {
            let v = logits.len() / (input.batch * input.seq_len);
            let mut cols = Vec::new();
            let mut lse = Vec::new();
            for row in logits.chunks_exact(v) {
                cols.extend(row.iter().step_by(stride));
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
                lse.push((max + sum.ln()) as f32);
            }
            let d = max_diff(&cols, &r.f32(&format!("{case}.logits")))
                .max(max_diff(&lse, &r.f32(&format!("{case}.lse"))));
            println!("{case} {side}: max |Δ| vs the reference {d:.2e}");
            assert!(d <= TOL, "{case} {side}: vs the reference {d}");
        }
    }
}

/// transformers' greedy `generate` on the tiny Llama (`tiny/llama/generate.json`), alone and in
/// a left-padded batch, on wgpu; and the GGUF Q4_0 base (decoding through the KV cache with
/// the blocks kept frozen) gives the CPU's tokens.
#[test]
fn greedy_generation_on_wgpu_equals_transformers_and_the_cpu() {
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny/llama/generate.json")).unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> { serde_json::from_value(v.clone()).unwrap() };
    let settings = GenerationConfig {
        max_new_tokens: g["max_new_tokens"].as_u64().unwrap() as usize,
        eos_token_ids: vec![g["eos_token_id"].as_u64().unwrap() as u32],
        ..GenerationConfig::default()
    };
    let run = |model: &CausalLm, prompts: &[Vec<u32>]| -> Vec<Vec<u32>> {
        generate(model, prompts, &settings, None, &mut |_, _| {})
            .unwrap()
            .into_iter()
            .map(|o| o.tokens)
            .collect()
    };
    let model = load("llama", Quantization::F32, &gpu());
    let alone = run(&model, &[ids(&g["prompt_ids"][0])]);
    assert_eq!(alone[0], ids(&g["greedy_new_ids"][0]), "alone");
    let batch = &g["batch"];
    let prompts: Vec<Vec<u32>> = (0..2)
        .map(|r| {
            let mask = ids(&batch["attention_mask"][r]);
            let row = ids(&batch["input_ids"][r]).into_iter().zip(mask);
            row.filter(|(_, m)| *m == 1).map(|(t, _)| t).collect()
        })
        .collect();
    for (r, row) in run(&model, &prompts).iter().enumerate() {
        assert_eq!(*row, ids(&batch["greedy_new_ids"][r]), "batch row {r}");
    }

    let path = fixture("quantized/tiny_llama_q4_0.gguf");
    let [on_gpu, on_cpu] = [gpu(), default_device()].map(|d| {
        let model = Pretrained::load_as(&path, &d, Quantization::Stored)
            .unwrap()
            .model;
        run(&model, &prompts)
    });
    assert_eq!(on_gpu, on_cpu, "gguf q4_0");
}

/// Each step's (loss, grad norm), the trained weights, and how many micro-batches took the
/// fused backward, after three steps of two micro-batches.
type Run = (Vec<(f64, f64)>, HostParams, u64);

fn train(model: CausalLm, device: &Device) -> Run {
    let data = vec![batch(0..3, 12), batch(3..6, 12)];
    let mut trainer = Trainer::new(model, device, options(2, 1e-3, 3)).unwrap();
    let steps = (0..3)
        .map(|_| match trainer.step(&data).unwrap() {
            MicroOutcome::Stepped(m) => (m.loss, m.grad_norm),
            other => panic!("{other:?}"),
        })
        .collect();
    let params = params_to_host(trainer.model(), true).unwrap();
    (steps, params, trainer.fused_micro_batches())
}

/// The same run on both backends: losses and gradient norms within [`TOL`] (relative to
/// max(value, 1)), the same parameters trained, their values within [`TOL`]. The CPU took its
/// fused backward, wgpu burn's autodiff.
fn assert_same_run(what: &str, gpu: &Run, cpu: &Run) {
    assert_eq!(cpu.2, 6, "{what}: the CPU run is fused");
    assert_eq!(gpu.2, 0, "{what}: wgpu runs burn's autodiff");
    let mut worst = [0f64; 3];
    for (step, ((lg, ng), (lc, nc))) in gpu.0.iter().zip(&cpu.0).enumerate() {
        let (dl, dn) = ((lg - lc).abs(), (ng - nc).abs());
        assert!(
            dl <= f64::from(TOL) * lc.max(1.0),
            "{what} step {step}: loss {lg} vs {lc}"
        );
        assert!(
            dn <= f64::from(TOL) * nc.max(1.0),
            "{what} step {step}: norm {ng} vs {nc}"
        );
        worst[0] = worst[0].max(dl);
        worst[1] = worst[1].max(dn);
    }
    let (g, c) = (&gpu.1.tensors, &cpu.1.tensors);
    assert!(!g.is_empty(), "{what}: nothing trained");
    assert_eq!(
        g.keys().collect::<Vec<_>>(),
        c.keys().collect::<Vec<_>>(),
        "{what}: the same parameters train"
    );
    for (k, (_, shape, x)) in g {
        assert_eq!(shape, &c[k].1, "{what}: {k}");
        let d = max_diff(x, &c[k].2);
        assert!(d <= TOL, "{what}: {k} differs by {d}");
        worst[2] = worst[2].max(f64::from(d));
    }
    println!(
        "{what}: max |Δ| wgpu vs cpu over 3 steps: loss {:.2e}, grad norm {:.2e}, weights {:.2e} \
         ({} tensors); losses {:?}",
        worst[0],
        worst[1],
        worst[2],
        g.len(),
        gpu.0.iter().map(|s| s.0).collect::<Vec<_>>()
    );
}

/// LoRA r 4 on every projection, PEFT's default initialisation (A kaiming-uniform, B zeros)
/// drawn from `seed`.
fn with_lora(model: CausalLm, seed: u64, dora: bool) -> CausalLm {
    with_lora_dropout(model, seed, dora, 0.0)
}

/// [`with_lora`] with LoRA dropout `p` on the adapters' input.
fn with_lora_dropout(model: CausalLm, seed: u64, dora: bool, p: f64) -> CausalLm {
    kiln_lora::manual_seed(seed);
    let names = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let mut config = LoraConfig::new(4, 8.0, TargetModules::Names(names.map(String::from).into()));
    config.lora_dropout = p;
    config.init_lora_weights = InitLoraWeights::Kaiming;
    config.use_dora = dora;
    LoraModel::with_adapter(model, "default", config)
        .unwrap()
        .into_inner()
}

/// Three LoRA steps from the same seed on each backend, on the f32 tiny Llama and on its
/// NF4 base kept frozen: the same losses and adapters.
#[test]
fn lora_steps_on_wgpu_equal_the_cpu_from_the_same_seed() {
    let _g = serial();
    for q in ["f32", "nf4"] {
        let [on_gpu, on_cpu] = [gpu(), default_device()]
            .map(|d| train(with_lora(load("llama", quantization(q), &d), 3, false), &d));
        assert_same_run(&format!("lora {q}"), &on_gpu, &on_cpu);
    }
    // With dropout 0.1 the masks come from the same generator on both backends (drawn on the
    // host), so the runs still agree: the CPU's fused backward replays the masks burn's
    // autodiff path draws on wgpu.
    let [on_gpu, on_cpu] = [gpu(), default_device()].map(|d| {
        train(
            with_lora_dropout(load("llama", Quantization::F32, &d), 3, false, 0.1),
            &d,
        )
    });
    assert_same_run("lora dropout 0.1", &on_gpu, &on_cpu);
}

/// Three full fine-tuning steps (every weight trains) on each backend.
#[test]
fn full_fine_tuning_steps_on_wgpu_equal_the_cpu() {
    let _g = serial();
    let [on_gpu, on_cpu] = [gpu(), default_device()].map(|d| {
        let model = load("llama", Quantization::F32, &d).into_full_training();
        train(model, &d)
    });
    assert_same_run("full", &on_gpu, &on_cpu);
}

/// A model loaded on the CPU with its base frozen in NF4 and moved to wgpu: every frozen
/// weight follows (`Module::devices`, the device adapters are created on), the logits equal
/// the model loaded on wgpu, and DoRA (whose norm dequantizes the frozen weight on the layer's
/// device) trains there like it.
#[test]
fn a_frozen_base_moves_to_wgpu_with_its_model() {
    let _g = serial();
    let (cpu, gpu) = (default_device(), gpu());
    let nf4 = || quantization("nf4");
    let moved = load("llama", nf4(), &cpu).to_device(&gpu);
    let o_proj = &moved.model.layers[0].self_attn.o_proj;
    assert!(o_proj.weight.as_frozen().is_some());
    assert!(o_proj.bias.is_none() && o_proj.adapters.is_empty());
    assert_eq!(
        o_proj.devices(),
        vec![gpu.clone()],
        "devices of a frozen layer"
    );
    assert_eq!(o_proj.weight.device(), gpu);
    assert_eq!(moved.devices(), vec![gpu.clone()]);
    let forked = load("llama", nf4(), &cpu).fork(&gpu);
    assert_eq!(
        forked.model.layers[1].mlp.down_proj.devices(),
        vec![gpu.clone()]
    );

    let input = batch(0..3, 12).input;
    let there = load("llama", nf4(), &gpu);
    let d = max_diff(
        &host(moved.forward(&input).unwrap()),
        &host(there.forward(&input).unwrap()),
    );
    assert!(d <= 1e-6, "moved vs loaded on wgpu: {d}");

    let moved = with_lora(moved, 4, true);
    let adapter = moved.model.layers[0].self_attn.o_proj.adapters[0]
        .lora_a
        .val();
    assert_eq!(adapter.device(), gpu, "an adapter added after the move");
    // The trainer moves a model loaded on the CPU itself.
    let from_cpu = with_lora(load("llama", nf4(), &cpu), 4, true);
    let there = with_lora(there, 4, true);
    let runs = [moved, from_cpu, there].map(|m| train(m, &gpu));
    for (what, run) in [("moved", &runs[0]), ("trainer-moved", &runs[1])] {
        for (a, b) in run.0.iter().zip(&runs[2].0) {
            assert!((a.0 - b.0).abs() <= 1e-6, "{what}: loss {a:?} vs {b:?}");
        }
        for (k, (_, _, x)) in &run.1.tensors {
            let d = max_diff(x, &runs[2].1.tensors[k].2);
            assert!(d <= 1e-6, "{what}: {k} differs by {d}");
        }
    }
}
