//! Invariants of the decoder on a tiny fixture model: the KV cache, left padding and packed
//! segments must not change what a row computes.
#![allow(clippy::unwrap_used)]
mod common;
use common::{fixtures, max_abs_diff};
use kiln_models::{
    CausalLm, DecoderConfig, DecoderInput, KvCache, SafetensorsWeights, build_causal_lm,
    default_device,
};

fn tiny(name: &str) -> CausalLm {
    let dir = fixtures().join("tiny").join(name);
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    build_causal_lm(
        &config,
        &SafetensorsWeights::open(&dir).unwrap(),
        &default_device(),
    )
    .unwrap()
}

fn host(t: burn::tensor::Tensor<3>) -> Vec<f32> {
    t.into_data().try_into_vec().unwrap()
}

const IDS: [u32; 10] = [17, 250, 3, 99, 400, 12, 7, 301, 45, 88];

#[test]
fn cached_decoding_equals_full_forward() {
    for name in ["llama", "mistral", "qwen2"] {
        let model = tiny(name);
        let full = host(model.forward(&DecoderInput::single(&IDS)).unwrap());
        let v = model.config.vocab_size;
        // Prefill 4 tokens, then feed one at a time.
        let mut cache = KvCache::default();
        let mut got = host(
            model.logits(
                model
                    .forward_hidden(&DecoderInput::single(&IDS[..4]), Some(&mut cache))
                    .unwrap(),
            ),
        );
        for &id in &IDS[4..] {
            got.extend(host(
                model.logits(
                    model
                        .forward_hidden(&DecoderInput::single(&[id]), Some(&mut cache))
                        .unwrap(),
                ),
            ));
        }
        assert_eq!(cache.len(), IDS.len());
        let diff = max_abs_diff(&got, &full);
        assert!(diff <= 1e-5, "{name}: cached vs full max |Δ| = {diff}");
        assert_eq!(got.len(), IDS.len() * v);
    }
}

#[test]
fn left_padded_batch_equals_rows_alone() {
    for name in ["llama", "mistral", "qwen2"] {
        let model = tiny(name);
        let short = &IDS[..6];
        let v = model.config.vocab_size;
        let alone_long = host(model.forward(&DecoderInput::single(&IDS)).unwrap());
        let alone_short = host(model.forward(&DecoderInput::single(short)).unwrap());
        let pad = IDS.len() - short.len();
        let mut ids = IDS.to_vec();
        ids.extend(std::iter::repeat_n(0, pad).chain(short.iter().copied()));
        let mut mask = vec![1u8; IDS.len()];
        mask.extend(std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, short.len())));
        let batch = host(
            model
                .forward(&DecoderInput::new(ids, 2, IDS.len()).with_attention_mask(mask))
                .unwrap(),
        );
        let t = IDS.len();
        assert!(
            max_abs_diff(&batch[..t * v], &alone_long) <= 1e-5,
            "{name}: row 0"
        );
        let d = max_abs_diff(&batch[(t + pad) * v..], &alone_short);
        assert!(d <= 1e-5, "{name}: left-padded row differs by {d}");
    }
}

/// Prefix caching: the first tokens of a left-padded row of a batch prefill, cut out with
/// `KvCache::prefix`, continue with the rest of another prompt exactly as that whole prompt
/// prefilled alone (and as the cut row itself, whose tokens they are); impossible prefixes are
/// refused.
#[test]
fn a_rows_prefix_continues_as_the_whole_prompt() {
    for name in ["llama", "mistral", "qwen2"] {
        let model = tiny(name);
        let v = model.config.vocab_size;
        let short = &IDS[..7];
        let pad = IDS.len() - short.len();
        let mut ids = IDS.to_vec();
        ids.extend(std::iter::repeat_n(0, pad).chain(short.iter().copied()));
        let mut mask = vec![1u8; IDS.len()];
        mask.extend(std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, short.len())));
        let mut batch = KvCache::default();
        let input = DecoderInput::new(ids, 2, IDS.len()).with_attention_mask(mask);
        model.forward_hidden(&input, Some(&mut batch)).unwrap();
        // Row 1 (padded) shares its first 5 tokens with a new prompt that goes on differently.
        let mut cache = batch.prefix(1, 5).unwrap();
        assert_eq!((cache.rows(), cache.len()), (1, 5));
        let other = [IDS[0], IDS[1], IDS[2], IDS[3], IDS[4], 401, 77, 3];
        let rest = model
            .forward_hidden(&DecoderInput::single(&other[5..]), Some(&mut cache))
            .unwrap();
        let got = host(model.logits(rest));
        let alone = host(model.forward(&DecoderInput::single(&other)).unwrap());
        let d = max_abs_diff(&got, &alone[5 * v..]);
        assert!(d <= 1e-5, "{name}: continued prefix differs by {d}");
        assert!(batch.prefix(1, 8).is_err() && batch.prefix(1, 0).is_err());
        assert!(batch.prefix(2, 1).is_err());
        assert_eq!(batch.prefix(0, IDS.len()).unwrap().len(), IDS.len());
    }
}

#[test]
fn packed_segments_equal_separate_rows() {
    let model = tiny("llama");
    let v = model.config.vocab_size;
    let (a, b) = (&IDS[..4], &IDS[4..]);
    let alone_a = host(model.forward(&DecoderInput::single(a)).unwrap());
    let alone_b = host(model.forward(&DecoderInput::single(b)).unwrap());
    let segments: Vec<u32> = std::iter::repeat_n(0, a.len())
        .chain(std::iter::repeat_n(1, b.len()))
        .collect();
    let input = DecoderInput::single(&IDS).with_segment_ids(segments);
    assert_eq!(input.positions(0), vec![0, 1, 2, 3, 0, 1, 2, 3, 4, 5]);
    let packed = host(model.forward(&input).unwrap());
    assert!(max_abs_diff(&packed[..a.len() * v], &alone_a) <= 1e-5);
    assert!(max_abs_diff(&packed[a.len() * v..], &alone_b) <= 1e-5);
}

#[test]
fn batched_generation_with_left_padding_equals_each_prompt_alone() {
    use kiln_models::{GenerationConfig, generate};
    for name in ["llama", "mistral"] {
        let model = tiny(name);
        let prompts = vec![IDS[..3].to_vec(), IDS.to_vec(), IDS[2..7].to_vec()];
        let config = GenerationConfig {
            max_new_tokens: 6,
            ..GenerationConfig::default()
        };
        let batched = generate(&model, &prompts, &config, None, &mut |_, _| {}).unwrap();
        for (p, got) in prompts.iter().zip(&batched) {
            let alone = generate(
                &model,
                std::slice::from_ref(p),
                &config,
                None,
                &mut |_, _| {},
            )
            .unwrap();
            assert_eq!(got.tokens, alone[0].tokens, "{name}: prompt {p:?}");
            assert_eq!(got.tokens.len(), 6);
        }
    }
}

#[test]
fn loss_on_counted_positions_only_equals_full_loss() {
    use kiln_models::{IGNORE_INDEX, causal_lm_loss_sum};
    for name in ["llama", "qwen2"] {
        let model = tiny(name);
        let (b, t) = (2, IDS.len());
        let ids: Vec<u32> = IDS.iter().chain(IDS.iter().rev()).copied().collect();
        // A prompt that does not count, then the completion; row 1 counts only two tokens.
        let labels: Vec<i64> = (0..b * t)
            .map(|k| {
                let (r, i) = (k / t, k % t);
                let counted = if r == 0 { i >= 4 } else { i == 3 || i == 8 };
                if counted {
                    i64::from(ids[k])
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        let input = DecoderInput::new(ids, b, t);
        let full = causal_lm_loss_sum(model.forward(&input).unwrap(), &labels).unwrap();
        let part = model.loss_sum(&input, &labels).unwrap();
        assert_eq!(full.tokens, part.tokens);
        assert_eq!(part.tokens, 6 + 2);
        let (f, p) = (full.sum.into_scalar::<f32>(), part.sum.into_scalar::<f32>());
        assert!(
            (f - p).abs() <= 1e-5 * f.abs().max(1.0),
            "{name}: {f} vs {p}"
        );
        let bad: Vec<i64> = labels
            .iter()
            .map(|&l| if l == IGNORE_INDEX { l } else { 1 << 20 })
            .collect();
        assert!(model.loss_sum(&input, &bad).is_err());
    }
}

/// Full fine-tuning of a model whose matrices are kept quantized: every matrix becomes a dense
/// f32 parameter that trains, equal to the dequantized values (`set_require_grad(true)` alone
/// trained only the norms of a stored GGUF).
#[test]
fn full_training_dequantizes_every_frozen_matrix_into_a_trained_parameter() {
    use burn::module::Module;
    use kiln_lora::AdapterTarget;
    use kiln_models::Quantization;
    let dir = fixtures().join("tiny").join("llama");
    let device = kiln_models::default_device();
    let dense = CausalLm::load(&dir, &device, Quantization::F32).unwrap();
    let nf4 = CausalLm::load(&dir, &device, "nf4".parse().unwrap()).unwrap();
    assert!(
        nf4.num_params() < dense.num_params() / 2,
        "NF4 matrices are not parameters"
    );
    let input = DecoderInput::single(&IDS);
    let before = host(nf4.forward(&input).unwrap());
    let full = nf4.into_full_training();
    assert_eq!(full.num_params(), dense.num_params());
    // Every projection a dense parameter (which parameters train is decided on the training
    // device, where `require_grad` applies: see kiln-train).
    let mut frozen = 0;
    full.visit_linears(&mut |_, l| frozen += usize::from(l.weight.as_dense().is_none()));
    assert_eq!(frozen, 0, "every projection dense");
    assert!(full.model.embed_tokens.as_dense().is_some());
    // The dense weights are the NF4 values: the same logits.
    assert!(max_abs_diff(&host(full.forward(&input).unwrap()), &before) <= 1e-4);
}

/// burn's parameter paths (what training checkpoints, optimizer state and the parameter walks
/// key on) are the checkpoint's tensor names, separate (Llama, Gemma 3) and fused (Phi-3)
/// projections alike: the projection enums add no path segment. A dense base weight sits under
/// `BaseWeight`'s `Dense` variant (`…q_proj.weight.Dense`, the embedding `embed_tokens.Dense`).
#[test]
fn parameter_paths_are_the_checkpoint_names() {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct Paths(Vec<String>, Vec<String>);
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
            self.1.push(self.0.join("."));
        }
    }
    for name in ["llama", "gemma3", "phi3"] {
        let model = tiny(name);
        let mut v = Paths(Vec::new(), Vec::new());
        model.visit(&mut v);
        let mut got: Vec<String> =
            v.1.iter()
                .map(|p| match p.strip_suffix(".weight.Dense") {
                    Some(module) => format!("{module}.weight"),
                    None => p.replace(".Dense", ".weight"),
                })
                .collect();
        got.sort();
        let bytes =
            std::fs::read(fixtures().join("tiny").join(name).join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut want: Vec<String> = file
            .names()
            .into_iter()
            .filter(|n| !(model.lm_head.is_none() && *n == "lm_head.weight"))
            .map(str::to_string)
            .collect();
        want.sort();
        assert_eq!(got, want, "{name}");
    }
}

/// The hand-written `Module` of the layers with projection enums counts and shows every
/// projection: the parameter count is the checkpoint's, and the printed module names each
/// projection of the layout (separate or fused).
#[test]
fn layers_with_projection_enums_count_and_show_their_projections() {
    use burn::module::Module;
    for (name, shown) in [("llama", "q_proj"), ("phi3", "gate_up_proj")] {
        let model = tiny(name);
        let bytes =
            std::fs::read(fixtures().join("tiny").join(name).join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let want: usize = file
            .tensors()
            .iter()
            .filter(|(n, _)| !(model.lm_head.is_none() && n == "lm_head.weight"))
            .map(|(_, t)| t.shape().iter().product::<usize>())
            .sum();
        assert_eq!(model.num_params(), want, "{name}");
        let layer = &model.model.layers[0];
        let attn = layer.self_attn.num_params() + layer.mlp.num_params();
        assert!(attn > 0 && layer.to_string().contains(shown), "{name}");
    }
}
