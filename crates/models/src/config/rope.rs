//! The RoPE settings of a `config.json`, in all the shapes they come in: `rope_theta` and
//! `rope_scaling` (transformers 4), `rope_parameters` (transformers 5; nested by layer type for
//! Gemma 3), Gemma 3's `rope_local_base_freq`, Phi-3's `partial_rotary_factor` and top-level
//! `original_max_position_embeddings`, and the `longrope` (`su`) scaling of the 128k Phi-3 models.
//!
//! Reference: transformers' `modeling_rope_utils.py` (`standardize_rope_params`,
//! `_compute_longrope_parameters`) and `Gemma3TextConfig.convert_rope_params_to_dict`.
use super::{Family, HfConfig, RopeScaling};
use crate::error::{ModelError, Result};
use serde_json::Value;
use std::path::Path;

/// Base and scaling of one rotary embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// The rotary embeddings of a model: one for full-attention layers and, for Gemma 3, another for
/// sliding-window layers; plus the fraction of each head that rotates.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ResolvedRope {
    pub global: RopeParams,
    pub local: Option<RopeParams>,
    pub partial_rotary_factor: f64,
}

/// What scaling parsing needs besides the scaling object itself.
struct Context<'a> {
    path: &'a Path,
    family: Family,
    max_position_embeddings: usize,
    /// Phi-3's top-level `original_max_position_embeddings` (wins over the scaling's own).
    original_max_position_embeddings: Option<usize>,
}

impl HfConfig {
    /// Resolves the RoPE settings of `family`.
    pub(super) fn resolve_rope(&self, family: Family, path: &Path) -> Result<ResolvedRope> {
        let ctx = Context {
            path,
            family,
            max_position_embeddings: self.max_position_embeddings,
            original_max_position_embeddings: self.original_max_position_embeddings,
        };
        let params = self.rope_parameters.as_ref().filter(|v| !v.is_null());
        let num = |v: Option<&Value>, key: &str| v.and_then(|p| p.get(key)).and_then(Value::as_f64);
        let partial_rotary_factor = self
            .partial_rotary_factor
            .or_else(|| num(params, "partial_rotary_factor"))
            .unwrap_or(1.0);
        let default_global = if family == Family::Gemma3 {
            1_000_000.0
        } else {
            10_000.0
        };
        let default_local = self.rope_local_base_freq.unwrap_or(10_000.0);
        let nested = params.is_some_and(|p| {
            p.get("full_attention").is_some() || p.get("sliding_attention").is_some()
        });
        if let (true, Some(p)) = (nested, params) {
            let one = |key: &str, default_theta: f64| -> Result<Option<RopeParams>> {
                match p.get(key).filter(|v| !v.is_null()) {
                    None => Ok(None),
                    Some(v) => Ok(Some(RopeParams {
                        theta: num(Some(v), "rope_theta")
                            .or(self.rope_theta)
                            .unwrap_or(default_theta),
                        scaling: parse_rope_scaling(v, &ctx)?,
                    })),
                }
            };
            let global = one("full_attention", default_global)?.unwrap_or(RopeParams {
                theta: self.rope_theta.unwrap_or(default_global),
                scaling: RopeScaling::Default,
            });
            let local = match one("sliding_attention", default_local)? {
                Some(l) => Some(l),
                None if family == Family::Gemma3 => Some(RopeParams {
                    theta: default_local,
                    scaling: RopeScaling::Default,
                }),
                None => None,
            };
            return Ok(ResolvedRope {
                global,
                local,
                partial_rotary_factor,
            });
        }
        let theta = self
            .rope_theta
            .or_else(|| num(params, "rope_theta"))
            .unwrap_or(default_global);
        let scaling = match self.rope_scaling.as_ref().or(params) {
            None | Some(Value::Null) => RopeScaling::Default,
            Some(v) => parse_rope_scaling(v, &ctx)?,
        };
        // Gemma 3: scaling applies to global layers only; local layers use their own base.
        let local = (family == Family::Gemma3).then_some(RopeParams {
            theta: default_local,
            scaling: RopeScaling::Default,
        });
        Ok(ResolvedRope {
            global: RopeParams { theta, scaling },
            local,
            partial_rotary_factor,
        })
    }
}

/// Parses one scaling object (`rope_scaling`, or a `rope_parameters` entry).
fn parse_rope_scaling(v: &Value, ctx: &Context<'_>) -> Result<RopeScaling> {
    let bad = |reason: String| ModelError::Config {
        path: ctx.path.to_path_buf(),
        key: "rope_scaling".into(),
        reason,
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |key: &str| {
        v.get(key)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| bad(format!("`{kind}` scaling needs `{key}`")))
    };
    // transformers' Phi3Config renames the old `su` and `yarn` types to `longrope`.
    let longrope =
        kind == "longrope" || kind == "su" || (kind == "yarn" && ctx.family == Family::Phi3);
    match kind {
        "default" => Ok(RopeScaling::Default),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        _ if longrope => {
            let factors = |key: &str| -> Result<Vec<f64>> {
                v.get(key)
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| {
                        bad(format!("`{kind}` scaling needs `{key}`, a list of numbers"))
                    })
            };
            let original = ctx
                .original_max_position_embeddings
                .or_else(|| {
                    v.get("original_max_position_embeddings")
                        .and_then(Value::as_u64)
                        .map(|n| n as usize)
                })
                .unwrap_or(ctx.max_position_embeddings);
            if original == 0 {
                return Err(bad(
                    "original_max_position_embeddings must be positive".into()
                ));
            }
            let factor = v
                .get("factor")
                .and_then(Value::as_f64)
                .unwrap_or(ctx.max_position_embeddings as f64 / original as f64);
            let attention_factor = match v.get("attention_factor").and_then(Value::as_f64) {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            Ok(RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor,
            })
        }
        other => Err(bad(format!(
            "rope type `{other}` is not supported (default, linear, llama3, longrope)"
        ))),
    }
}
