//! Text generation with a KV cache: greedy or sampled (temperature, top-k, top-p), repetition
//! penalty, EOS ids and stop strings, streaming callback, batched prompts with left padding.
//!
//! Logits are processed in transformers' order: repetition penalty, then temperature, top-k
//! and top-p; greedy decoding takes the first maximum as `torch.argmax` does.
use crate::decoder::{CausalLm, DecoderInput};
use crate::error::{ModelError, Result};
use crate::kv::KvCache;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Sampled after temperature, top-k (0 = off) and top-p (1.0 = off).
    Sample {
        temperature: f32,
        top_k: usize,
        top_p: f32,
    },
}

impl Sampling {
    /// The rule of command-line style settings: temperature 0 is greedy decoding, a positive
    /// temperature samples. A negative or non-finite temperature, or a top-p outside (0, 1], is
    /// an error whichever rule it selects (nothing is ignored silently).
    pub fn from_settings(temperature: f32, top_k: usize, top_p: f32) -> Result<Self> {
        let sampling = Self::Sample {
            temperature,
            top_k,
            top_p,
        };
        if temperature == 0.0 {
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(ModelError::Input(format!(
                    "top_p = {top_p} is not in (0, 1]"
                )));
            }
            return Ok(Self::Greedy);
        }
        GenerationConfig {
            sampling: sampling.clone(),
            ..Default::default()
        }
        .validate()?;
        Ok(sampling)
    }
}

/// Generation settings, like transformers' `GenerationConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// 1.0 disables it; >1 discourages tokens already in the prompt or output.
    pub repetition_penalty: f32,
    pub seed: u64,
    /// Generation of a row stops after it emits one of these.
    pub eos_token_ids: Vec<u32>,
    /// Generation of a row stops once its decoded output contains one of these.
    pub stop_strings: Vec<String>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            sampling: Sampling::Greedy,
            repetition_penalty: 1.0,
            seed: 0,
            eos_token_ids: Vec::new(),
            stop_strings: Vec::new(),
        }
    }
}

impl GenerationConfig {
    /// Refuses settings transformers refuses: a temperature that is not a positive number, a
    /// top-p outside (0, 1], a repetition penalty that is not a positive number.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32, want: &str| {
            Err(ModelError::Input(format!(
                "{what} = {v} is not {want}{}",
                if what == "temperature" {
                    " (for greedy decoding use Sampling::Greedy / temperature 0 on the command line)"
                } else {
                    ""
                }
            )))
        };
        if let Sampling::Sample {
            temperature, top_p, ..
        } = self.sampling
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return bad("temperature", temperature, "a positive number");
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return bad("top_p", top_p, "in (0, 1]");
            }
        }
        let p = self.repetition_penalty;
        if !(p.is_finite() && p > 0.0) {
            return bad("repetition_penalty", p, "a positive number");
        }
        Ok(())
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Eos,
    StopString,
    Length,
}

/// The new tokens of one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Generated ids, the final EOS included when generation ended on one.
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
}

/// Applies repetition penalty and the sampling rule to one row of logits and picks a token.
pub fn pick_token(
    logits: &mut [f32],
    history: &[u32],
    config: &GenerationConfig,
    rng: &mut StdRng,
) -> u32 {
    if config.repetition_penalty != 1.0 {
        let p = config.repetition_penalty;
        let mut seen = history.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &id in &seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l < 0.0 { *l * p } else { *l / p };
            }
        }
    }
    match config.sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } => {
            let t = if temperature > 0.0 { temperature } else { 1.0 };
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let keep = if top_k > 0 {
                top_k.min(order.len())
            } else {
                order.len()
            };
            order.truncate(keep);
            let max = logits[order[0]] / t;
            let mut probs: Vec<f64> = order
                .iter()
                .map(|&i| ((logits[i] / t - max) as f64).exp())
                .collect();
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
            if top_p < 1.0 {
                // Keep the smallest prefix (by descending probability) whose mass reaches top_p.
                let mut mass = 0.0;
                let mut n = 0;
                for p in &probs {
                    n += 1;
                    mass += p;
                    if mass >= top_p as f64 {
                        break;
                    }
                }
                probs.truncate(n.max(1));
                let total: f64 = probs.iter().sum();
                probs.iter_mut().for_each(|p| *p /= total);
            }
            let mut u: f64 = rng.random();
            for (k, p) in probs.iter().enumerate() {
                if u < *p {
                    return order[k] as u32;
                }
                u -= p;
            }
            order[probs.len() - 1] as u32
        }
    }
}

/// Index of the first maximum.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates continuations of `prompts` (token ids, any lengths: left-padded into one batch).
///
/// `tokenizer` is needed only for stop strings. `on_token(row, id)` is called for every new token
/// as it is chosen, for streaming.
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    tokenizer: Option<&Tokenizer>,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generated>> {
    config.validate()?;
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ModelError::Input(
            "generation needs at least one non-empty prompt".into(),
        ));
    }
    if !config.stop_strings.is_empty() && tokenizer.is_none() {
        return Err(ModelError::Input(
            "stop strings need a tokenizer to decode the output".into(),
        ));
    }
    let b = prompts.len();
    let t = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pad = config.eos_token_ids.first().copied().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for p in prompts {
        ids.extend(std::iter::repeat_n(pad, t - p.len()).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0u8, t - p.len()).chain(std::iter::repeat_n(1u8, p.len())));
    }
    // The whole padded batch so far, for a recomputation of the cache (LongRoPE's switch).
    let (mut all_ids, mut all_mask) = (ids.clone(), mask.clone());
    let mut input = DecoderInput::new(ids, b, t).with_attention_mask(mask);
    let mut cache = KvCache::default();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut out: Vec<Generated> = (0..b)
        .map(|_| Generated {
            tokens: Vec::new(),
            finish: FinishReason::Length,
        })
        .collect();
    let mut done = vec![false; b];
    let vocab = model.config.vocab_size;
    for _ in 0..config.max_new_tokens {
        // On rayon's pool: every kernel loop of the step starts inside it (`on_pool`).
        let logits: Vec<f32> = kiln_cpu::on_pool(|| {
            let hidden = model.forward_hidden(&input, Some(&mut cache))?;
            let [_, tq, d] = hidden.dims();
            let last = hidden.slice([0..b, tq - 1..tq, 0..d]);
            model
                .logits(last)
                .into_data()
                .try_into_vec()
                .map_err(|e| ModelError::Backend {
                    what: "logits".into(),
                    reason: format!("{e:?}"),
                })
        })?;
        let mut next = Vec::with_capacity(b);
        for r in 0..b {
            if done[r] {
                next.push(pad);
                continue;
            }
            let row = &mut logits[r * vocab..(r + 1) * vocab].to_vec();
            let id = pick_token(row, &history[r], config, &mut rng);
            history[r].push(id);
            out[r].tokens.push(id);
            on_token(r, id);
            if config.eos_token_ids.contains(&id) {
                done[r] = true;
                out[r].finish = FinishReason::Eos;
            } else if let Some(tok) = tokenizer
                && !config.stop_strings.is_empty()
            {
                let text = tok.decode(&out[r].tokens, false).unwrap_or_default();
                if config
                    .stop_strings
                    .iter()
                    .any(|s| text.contains(s.as_str()))
                {
                    done[r] = true;
                    out[r].finish = FinishReason::StopString;
                }
            }
            next.push(id);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        let len = all_ids.len() / b;
        all_ids = interleave(&all_ids, &next, len);
        all_mask = interleave(&all_mask, &vec![1; b], len);
        input = if model.recompute_cache_at() == Some(cache.len()) {
            // The next token crosses LongRoPE's original context: every key is recomputed with
            // the long frequencies, as transformers does for Phi-3.
            cache = KvCache::default();
            DecoderInput::new(all_ids.clone(), b, len + 1).with_attention_mask(all_mask.clone())
        } else {
            DecoderInput::new(next, b, 1).with_attention_mask(vec![1; b])
        };
    }
    Ok(out)
}

/// `rows` (`[b, len]` row-major) with one more column `col` (`[b]`).
fn interleave<T: Copy>(rows: &[T], col: &[T], len: usize) -> Vec<T> {
    rows.chunks(len.max(1))
        .zip(col)
        .flat_map(|(r, c)| r.iter().copied().chain(std::iter::once(*c)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_follows_transformers_sign_rule() {
        let mut logits = vec![2.0, -2.0, 1.0];
        let config = GenerationConfig {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(0);
        // 0 -> 1.0, 1 -> -4.0: token 2 (1.0) ties with token 0 and the first maximum wins.
        let id = pick_token(&mut logits, &[0, 1], &config, &mut rng);
        assert_eq!(logits, vec![1.0, -4.0, 1.0]);
        assert_eq!(id, 0);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeded_sampling_repeats() {
        let logits = vec![0.1, 3.0, 0.5, 2.9];
        let k1 = GenerationConfig {
            sampling: Sampling::Sample {
                temperature: 0.7,
                top_k: 1,
                top_p: 1.0,
            },
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20 {
            assert_eq!(pick_token(&mut logits.clone(), &[], &k1, &mut rng), 1);
        }
        let free = GenerationConfig {
            sampling: Sampling::Sample {
                temperature: 1.5,
                top_k: 0,
                top_p: 0.9,
            },
            ..Default::default()
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| pick_token(&mut logits.clone(), &[], &free, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        // top-p 0.9 over these logits excludes token 0 (the least likely).
        assert!(!draw(4).contains(&0));
    }

    #[test]
    fn nonsense_settings_are_refused_by_name() {
        assert_eq!(
            Sampling::from_settings(0.0, 0, 1.0).unwrap(),
            Sampling::Greedy
        );
        assert!(matches!(
            Sampling::from_settings(0.8, 5, 0.9).unwrap(),
            Sampling::Sample { top_k: 5, .. }
        ));
        for (t, p, key) in [
            (-1.0, 1.0, "temperature"),
            (f32::NAN, 1.0, "temperature"),
            (f32::INFINITY, 1.0, "temperature"),
            (0.7, 1.5, "top_p"),
            (0.7, 0.0, "top_p"),
            (0.0, 1.5, "top_p"),
            (0.7, f32::NAN, "top_p"),
        ] {
            let err = Sampling::from_settings(t, 0, p).unwrap_err().to_string();
            assert!(err.contains(key), "({t}, {p}): {err}");
        }
        let config = GenerationConfig {
            repetition_penalty: -1.0,
            ..Default::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("repetition_penalty")
        );
    }
}
