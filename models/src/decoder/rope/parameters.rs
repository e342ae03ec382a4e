//! Rotary embedding parameters: the rope type and its values, read from either key style of
//! `config.json` (`rope_theta` plus `rope_scaling`, or `rope_parameters`).

use serde_json::Value;

use crate::Result;
use crate::decoder::config_check::ConfigCheck;

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
    /// Per-frequency divisors of the inverse frequencies (`dim / 2` of them), applied after
    /// the scaling: llama.cpp's `rope_freqs` (how GGUF files carry Llama 3's frequency
    /// scaling), read from the config's `rope_freq_factors`. `None` for none.
    pub freq_factors: Option<Vec<f32>>,
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
        let mut rope = Self::parse_keys(check, json, dim, max_position_embeddings, default_theta)?;
        rope.freq_factors = match json.get("rope_freq_factors") {
            None | Some(Value::Null) => None,
            Some(Value::Array(values)) => {
                let factors = values
                    .iter()
                    .map(|v| {
                        v.as_f64()
                            .filter(|f| f.is_finite() && *f > 0.0)
                            .map(|f| f as f32)
                    })
                    .collect::<Option<Vec<f32>>>()
                    .ok_or_else(|| check.error("rope_freq_factors", "expected positive numbers"))?;
                if factors.len() != dim / 2 {
                    return Err(check.error(
                        "rope_freq_factors",
                        format!(
                            "{} factors for a rotated width of {dim} (one per frequency: {})",
                            factors.len(),
                            dim / 2
                        ),
                    ));
                }
                Some(factors)
            }
            Some(v) => {
                return Err(check.error(
                    "rope_freq_factors",
                    format!("expected a list of numbers, found {v}"),
                ));
            }
        };
        Ok(rope)
    }

    fn parse_keys(
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
                    freq_factors: None,
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
                // As transformers (v5): the original length defaults to
                // `max_position_embeddings`; a missing factor is the ratio of the two.
                let original = original(check, Some(max_position_embeddings))?;
                let factor = match num(check, obj, prefix, "factor")? {
                    Some(_) => factor(check)?,
                    None => max_position_embeddings as f64 / original as f64,
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
            freq_factors: None,
        })
    }
}

impl crate::decoder::children::Children for RopeConfig {}

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
}
