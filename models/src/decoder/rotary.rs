//! Rotary position embeddings: the parameters (`rope_theta`, `rope_scaling` /
//! `rope_parameters`), the per-pass cos/sin tables, and the `RotaryEmbedding` slot.
//!
//! The frequencies are computed as transformers computes them (float32, same formulas), for
//! the rope types `default`, `linear`, `dynamic`, `llama3` and `yarn`. Tables are computed per
//! forward pass for exactly the positions of its tokens, so left-padded rows (whose positions
//! start later) and dynamic scaling (which depends on the longest position) need no cached
//! state.

use candle_core::{DType, Device, Tensor};
use patch_core::{Module, Slot};
use serde_json::Value;

use crate::Result;
use crate::decoder::config::{ConfigCheck, DecoderConfig};
use crate::decoder::positions::Positions;

/// How the rotary frequencies are scaled (`rope_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: no scaling.
    Default,
    /// `linear`: positions divided by `factor` (frequencies divided by it).
    Linear {
        /// Scaling factor.
        factor: f64,
    },
    /// `dynamic`: NTK-aware base growth once a pass reaches past
    /// `original_max_position_embeddings`.
    Dynamic {
        /// Scaling factor.
        factor: f64,
        /// Context length the model was trained with.
        original_max_position_embeddings: usize,
    },
    /// `llama3`: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        /// Scaling factor.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Context length the model was trained with.
        original_max_position_embeddings: usize,
    },
    /// `yarn`: per-frequency blend of interpolation and extrapolation, plus an attention
    /// scaling of the tables.
    Yarn {
        /// Scaling factor.
        factor: f64,
        /// Context length the model was trained with.
        original_max_position_embeddings: usize,
        /// Rotations above which a frequency is extrapolated.
        beta_fast: f64,
        /// Rotations below which a frequency is interpolated.
        beta_slow: f64,
        /// Multiplier of cos/sin.
        attention_factor: f64,
        /// Whether the correction range is rounded outwards to whole dimensions.
        truncate: bool,
    },
}

/// Rotary embedding parameters, normalised from either key style.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    /// `rope_theta`: the frequency base.
    pub theta: f64,
    /// Rotated width (the head dimension).
    pub dim: usize,
    /// Scaling.
    pub scaling: RopeScaling,
}

/// The rope types [`RopeConfig::parse`] accepts.
pub const SUPPORTED_ROPE_TYPES: &str = "default, linear, dynamic, llama3, yarn";

fn num(
    check: &ConfigCheck<'_>,
    obj: &serde_json::Map<String, Value>,
    prefix: &str,
    key: &str,
) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            check.error(
                &format!("{prefix}.{key}"),
                format!("expected a number, found {v}"),
            )
        }),
    }
}

fn required(
    check: &ConfigCheck<'_>,
    obj: &serde_json::Map<String, Value>,
    prefix: &str,
    key: &str,
    rope_type: &str,
) -> Result<f64> {
    num(check, obj, prefix, key)?.ok_or_else(|| {
        check.error(
            &format!("{prefix}.{key}"),
            format!("required by rope type {rope_type:?} but missing"),
        )
    })
}

impl RopeConfig {
    /// Reads the rope keys of a config JSON object: the newer `rope_parameters` object
    /// (`rope_type`, `rope_theta`, ...) or the older `rope_theta` plus `rope_scaling`
    /// (`rope_type` or `type`); `default_theta` when neither gives a theta.
    pub fn parse(
        check: &ConfigCheck<'_>,
        json: &Value,
        dim: usize,
        max_position_embeddings: usize,
        default_theta: f64,
    ) -> Result<Self> {
        let top_theta = match json.get("rope_theta") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_f64().ok_or_else(|| {
                check.error("rope_theta", format!("expected a number, found {v}"))
            })?),
        };
        let (prefix, params) = match (json.get("rope_parameters"), json.get("rope_scaling")) {
            (Some(p), _) if !p.is_null() => ("rope_parameters", p),
            (_, Some(s)) if !s.is_null() => ("rope_scaling", s),
            _ => {
                let theta = check.positive_f64("rope_theta", top_theta.unwrap_or(default_theta))?;
                return Ok(Self {
                    theta,
                    dim,
                    scaling: RopeScaling::Default,
                });
            }
        };
        let obj = params
            .as_object()
            .ok_or_else(|| check.error(prefix, format!("expected an object, found {params}")))?;
        if obj.values().any(Value::is_object) {
            return Err(check.error(
                prefix,
                "per-layer-type rope parameters (an object of objects) are not supported by this family",
            ));
        }
        let theta = num(check, obj, prefix, "rope_theta")?
            .or(top_theta)
            .unwrap_or(default_theta);
        let theta = check.positive_f64(&format!("{prefix}.rope_theta"), theta)?;
        let rope_type = match obj.get("rope_type").or_else(|| obj.get("type")) {
            None | Some(Value::Null) => "default".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => {
                return Err(check.error(
                    &format!("{prefix}.rope_type"),
                    format!("expected a string, found {v}"),
                ));
            }
        };
        let factor = |check: &ConfigCheck<'_>| -> Result<f64> {
            let f = required(check, obj, prefix, "factor", &rope_type)?;
            if !(f.is_finite() && f >= 1.0) {
                return Err(check.error(
                    &format!("{prefix}.factor"),
                    format!("must be a number >= 1, found {f}"),
                ));
            }
            Ok(f)
        };
        let original = |check: &ConfigCheck<'_>, fallback: Option<usize>| -> Result<usize> {
            let key = format!("{prefix}.original_max_position_embeddings");
            match num(check, obj, prefix, "original_max_position_embeddings")? {
                Some(v) if v >= 1.0 && v.fract() == 0.0 => Ok(v as usize),
                Some(v) => Err(check.error(&key, format!("must be a positive integer, found {v}"))),
                None => fallback.ok_or_else(|| {
                    check.error(
                        &key,
                        format!("required by rope type {rope_type:?} but missing"),
                    )
                }),
            }
        };
        let scaling = match rope_type.as_str() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: factor(check)?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: factor(check)?,
                original_max_position_embeddings: original(check, Some(max_position_embeddings))?,
            },
            "llama3" => {
                let low = required(check, obj, prefix, "low_freq_factor", &rope_type)?;
                let high = required(check, obj, prefix, "high_freq_factor", &rope_type)?;
                if !(low > 0.0 && high > low) {
                    return Err(check.error(
                        &format!("{prefix}.high_freq_factor"),
                        format!("must be greater than low_freq_factor = {low} (and both positive), found {high}"),
                    ));
                }
                RopeScaling::Llama3 {
                    factor: factor(check)?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: original(check, None)?,
                }
            }
            "yarn" => {
                let mut factor = factor(check)?;
                // As transformers: when the original length is given, the factor is the ratio
                // of the extended length to it.
                let original = match num(check, obj, prefix, "original_max_position_embeddings")? {
                    Some(_) => {
                        let o = original(check, None)?;
                        factor = max_position_embeddings as f64 / o as f64;
                        o
                    }
                    None => max_position_embeddings,
                };
                let mscale = num(check, obj, prefix, "mscale")?;
                let mscale_all_dim = num(check, obj, prefix, "mscale_all_dim")?;
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention_factor = match num(check, obj, prefix, "attention_factor")? {
                    Some(a) => a,
                    None => match (mscale, mscale_all_dim) {
                        (Some(m), Some(a)) if m != 0.0 && a != 0.0 => {
                            get_mscale(factor, m) / get_mscale(factor, a)
                        }
                        _ => get_mscale(factor, 1.0),
                    },
                };
                let truncate = match obj.get("truncate") {
                    None | Some(Value::Null) => true,
                    Some(Value::Bool(b)) => *b,
                    Some(v) => {
                        return Err(check.error(
                            &format!("{prefix}.truncate"),
                            format!("expected a boolean, found {v}"),
                        ));
                    }
                };
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast: num(check, obj, prefix, "beta_fast")?.unwrap_or(32.0),
                    beta_slow: num(check, obj, prefix, "beta_slow")?.unwrap_or(1.0),
                    attention_factor,
                    truncate,
                }
            }
            other => {
                return Err(check.error(
                    &format!("{prefix}.rope_type"),
                    format!("unsupported rope type {other:?} (supported: {SUPPORTED_ROPE_TYPES})"),
                ));
            }
        };
        Ok(Self {
            theta,
            dim,
            scaling,
        })
    }

    /// The inverse frequencies (`dim / 2` of them) for a pass whose longest position is
    /// `seq_len - 1`, and the factor cos/sin are multiplied by. Float32, as transformers.
    pub fn inv_freq(&self, seq_len: usize) -> (Vec<f32>, f32) {
        let half = self.dim / 2;
        let base_freqs = |base: f64| -> Vec<f32> {
            (0..half)
                .map(|i| {
                    let exponent = (2 * i) as f32 / self.dim as f32;
                    1.0f32 / (base as f32).powf(exponent)
                })
                .collect()
        };
        match &self.scaling {
            RopeScaling::Default => (base_freqs(self.theta), 1.0),
            RopeScaling::Linear { factor } => {
                let f = *factor as f32;
                (
                    base_freqs(self.theta).into_iter().map(|x| x / f).collect(),
                    1.0,
                )
            }
            RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings,
            } => {
                let original = *original_max_position_embeddings as f64;
                let seq = (seq_len as f64).max(original);
                let d = self.dim as f64;
                let base =
                    self.theta * ((factor * seq / original) - (factor - 1.0)).powf(d / (d - 2.0));
                (base_freqs(base), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                );
                let old = *original_max_position_embeddings as f32;
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                let freqs = base_freqs(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        // Wavelengths are finite: "not below high and not above low" as transformers writes it.
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect();
                (freqs, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => {
                let d = self.dim as f64;
                let base = self.theta;
                let correction_dim = |rotations: f64| {
                    (d * ((*original_max_position_embeddings as f64)
                        / (rotations * 2.0 * std::f64::consts::PI))
                        .ln())
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(d - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let f = *factor as f32;
                let freqs = (0..half)
                    .map(|i| {
                        let pos_freq = (base as f32).powf((2 * i) as f32 / self.dim as f32);
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (f * pos_freq);
                        let ramp =
                            ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        interpolation * (1.0 - extrapolation_factor)
                            + extrapolation * extrapolation_factor
                    })
                    .collect();
                (freqs, *attention_factor as f32)
            }
        }
    }

    /// The cos/sin tables for `positions`, each `[batch, seq, dim / 2]` in `dtype` on `device`.
    pub fn tables(
        &self,
        positions: &Positions,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<RopeTables> {
        let (inv_freq, scale) = self.inv_freq(positions.max_position() as usize + 1);
        let half = inv_freq.len();
        let n = positions.ids().len() * half;
        let mut cos = Vec::with_capacity(n);
        let mut sin = Vec::with_capacity(n);
        for &p in positions.ids() {
            let p = p as f32;
            for &f in &inv_freq {
                let angle = p * f;
                cos.push(angle.cos() * scale);
                sin.push(angle.sin() * scale);
            }
        }
        let shape = (positions.batch(), positions.seq_len(), half);
        let cos = Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?;
        Ok(RopeTables { cos, sin })
    }
}

/// The cos/sin tables of one forward pass: `[batch, seq, rotary_dim / 2]` each, for the
/// positions of the pass's tokens (row by row, so left padding shifts them).
#[derive(Clone, Debug)]
pub struct RopeTables {
    /// Cosines (already multiplied by the rope type's attention factor).
    pub cos: Tensor,
    /// Sines (likewise).
    pub sin: Tensor,
}

impl RopeTables {
    /// Rotates `x`, laid out `[batch, seq, heads, head_dim]` (the projection's natural
    /// layout), in the rotate-half convention of transformers ([`crate::ops::rope`]).
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::ops::rope(x, &self.cos, &self.sin)
    }
}

/// The rotary embedding slot: turns the positions of a forward pass into cos/sin tables,
/// once per pass, for every layer.
pub trait RotaryEmbedding: Module {
    /// The tables for `positions`, in `dtype` on `device`.
    fn forward(
        &self,
        positions: &Positions,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<RopeTables>;
}

/// What every rotary embedding constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct RotaryArgs<'a> {
    /// The model's config view.
    pub config: &'a DecoderConfig,
}

impl Slot for dyn RotaryEmbedding {
    const NAME: &'static str = "RotaryEmbedding";
    type Args<'a> = RotaryArgs<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: Value) -> Result<RopeConfig> {
        RopeConfig::parse(&ConfigCheck::new("test"), &json, 16, 512, 10000.0)
    }

    #[test]
    fn both_key_styles_give_the_same_parameters() {
        let old = parse(serde_json::json!({
            "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        }))
        .unwrap();
        let new = parse(serde_json::json!({
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 64}
        }))
        .unwrap();
        assert_eq!(old, new);
        let legacy =
            parse(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 2.0}})).unwrap();
        assert_eq!(legacy.scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(legacy.theta, 10000.0);
    }

    #[test]
    fn unsupported_and_malformed_rope_keys_are_named() {
        let err =
            parse(serde_json::json!({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}))
                .unwrap_err();
        assert!(
            err.to_string().contains("rope_scaling.rope_type")
                && err.to_string().contains("longrope"),
            "{err}"
        );
        let err =
            parse(serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}))
                .unwrap_err();
        assert!(err.to_string().contains("low_freq_factor"), "{err}");
        let err =
            parse(serde_json::json!({"rope_scaling": {"rope_type": "linear", "factor": 0.5}}))
                .unwrap_err();
        assert!(err.to_string().contains("rope_scaling.factor"), "{err}");
        let err = parse(serde_json::json!({"rope_theta": "big"})).unwrap_err();
        assert!(err.to_string().contains("rope_theta"), "{err}");
    }

    #[test]
    fn scaled_frequencies_follow_their_formulas() {
        let default = parse(serde_json::json!({})).unwrap();
        let (f, s) = default.inv_freq(10);
        assert_eq!(s, 1.0);
        assert_eq!(f.len(), 8);
        assert!((f[1] - 1.0 / 10000f32.powf(2.0 / 16.0)).abs() < 1e-9);
        let linear =
            parse(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 4.0}})).unwrap();
        assert!((linear.inv_freq(10).0[3] - f[3] / 4.0).abs() < 1e-12);
        // Dynamic: unchanged up to the original length, a larger base past it.
        let dynamic =
            parse(serde_json::json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}})).unwrap();
        assert_eq!(dynamic.inv_freq(512).0, f);
        assert!(dynamic.inv_freq(2048).0[4] < f[4]);
        // Llama3: the highest frequency is kept, the lowest divided by the factor.
        let llama3 = parse(serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}))
        .unwrap();
        let l = llama3.inv_freq(10).0;
        assert_eq!(l[0], f[0]);
        assert!((l[7] - f[7] / 8.0).abs() < 1e-12);
        // Yarn: attention factor from the default mscale formula.
        let yarn = parse(serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}))
            .unwrap();
        let (y, s) = yarn.inv_freq(10);
        assert!((s - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        assert_eq!(y[0], f[0]);
        assert!((y[7] - f[7] / 4.0).abs() < 1e-9);
    }
}
