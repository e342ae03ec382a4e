//! transformers' `base_model_tp_plan`: module patterns (`layers.*.self_attn.q_proj`) to split
//! styles (`colwise`, `rowwise`, ...), read from a config when it carries one, else the plan
//! transformers' configs of these families declare. A tensor-parallel plan splits a block
//! only where this plan says to, with transformers' meanings.

use std::collections::BTreeMap;

use patchwork_models::decoder::DecoderConfig;

use crate::error::{Error, Result};

/// The plan transformers' Llama, Qwen2, Qwen3, Qwen2-MoE and Qwen3-MoE configs declare (the
/// dense families' being this one without the expert entries, which then match nothing).
pub const DEFAULT_TP_PLAN: [(&str, &str); 12] = [
    ("layers.*.self_attn.q_proj", "colwise"),
    ("layers.*.self_attn.k_proj", "colwise"),
    ("layers.*.self_attn.v_proj", "colwise"),
    (
        "layers.*.self_attn.q_norm",
        "replicated_with_grad_allreduce",
    ),
    (
        "layers.*.self_attn.k_norm",
        "replicated_with_grad_allreduce",
    ),
    ("layers.*.self_attn.o_proj", "rowwise"),
    ("layers.*.mlp.experts.gate_up_proj", "packed_colwise"),
    ("layers.*.mlp.experts.down_proj", "rowwise"),
    ("layers.*.mlp.experts", "moe_tp_experts"),
    ("layers.*.mlp.gate_proj", "colwise"),
    ("layers.*.mlp.up_proj", "colwise"),
    ("layers.*.mlp.down_proj", "rowwise"),
];

/// The styles this crate computes, and on what.
const KNOWN: [(&str, &[&str]); 6] = [
    (
        "colwise",
        &["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"],
    ),
    ("rowwise", &["o_proj", "down_proj"]),
    ("packed_colwise", &["gate_up_proj"]),
    ("moe_tp_experts", &["experts"]),
    ("replicated_with_grad_allreduce", &["q_norm", "k_norm"]),
    ("replicated", &[]),
];

/// A config's tensor-parallel plan: pattern -> style.
#[derive(Clone, Debug)]
pub(crate) struct TpPlan {
    entries: BTreeMap<String, String>,
}

impl TpPlan {
    /// The config's `base_model_tp_plan`, or [`DEFAULT_TP_PLAN`] when it has none; an error
    /// names an entry whose style this crate does not compute (or computes on other modules).
    pub(crate) fn of(config: &DecoderConfig) -> Result<Self> {
        let entries: BTreeMap<String, String> = match config.json.get("base_model_tp_plan") {
            None | Some(serde_json::Value::Null) => DEFAULT_TP_PLAN
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            Some(serde_json::Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(style) => Ok((k.clone(), style.to_string())),
                    None => Err(plan_error(k, &v.to_string(), "a style is a string")),
                })
                .collect::<Result<_>>()?,
            Some(other) => {
                return Err(plan_error(
                    "",
                    &other.to_string(),
                    "base_model_tp_plan is an object of module pattern -> style",
                ));
            }
        };
        for (pattern, style) in &entries {
            let module = pattern.rsplit('.').next().unwrap_or(pattern);
            match KNOWN.iter().find(|(s, _)| *s == style.as_str()) {
                Some((_, modules)) if modules.is_empty() || modules.contains(&module) => {}
                Some(_) => {
                    return Err(plan_error(
                        pattern,
                        style,
                        "this style is computed on other modules here",
                    ));
                }
                None => {
                    let known: Vec<&str> = KNOWN.iter().map(|(s, _)| *s).collect();
                    return Err(plan_error(
                        pattern,
                        style,
                        &format!("not a style computed here ({})", known.join(", ")),
                    ));
                }
            }
        }
        Ok(Self { entries })
    }

    /// The style the plan gives the module at `path` (`model.layers.3.mlp.gate_proj`), if
    /// any: patterns are relative to the base model, `*` standing for a layer index.
    pub(crate) fn style(&self, path: &str) -> Option<&str> {
        let relative = path.strip_prefix("model.").unwrap_or(path);
        let pattern: Vec<&str> = relative
            .split('.')
            .map(|part| {
                if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                    "*"
                } else {
                    part
                }
            })
            .collect();
        self.entries.get(&pattern.join(".")).map(String::as_str)
    }

    /// Whether the block at `path` is split: every one of its `(child, style)` entries has
    /// that style in the plan (true), none has an entry (false), or an error names the
    /// entries that disagree.
    pub(crate) fn splits(&self, path: &str, children: &[(&str, &str)]) -> Result<bool> {
        let found: Vec<(String, Option<&str>, &str)> = children
            .iter()
            .map(|(child, want)| {
                let p = if child.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}.{child}")
                };
                let style = self.style(&p);
                (p, style, *want)
            })
            .collect();
        if found.iter().all(|(_, style, _)| style.is_none()) {
            return Ok(false);
        }
        let wrong: Vec<String> = found
            .iter()
            .filter(|(_, style, want)| *style != Some(*want))
            .map(|(p, style, want)| format!("{p}: {} (needs {want})", style.unwrap_or("absent")))
            .collect();
        if wrong.is_empty() {
            Ok(true)
        } else {
            Err(plan_error(
                path,
                &wrong.join(", "),
                "a block is split whole or not at all",
            ))
        }
    }
}

fn plan_error(pattern: &str, style: &str, why: &str) -> Error {
    Error::Plan(format!("base_model_tp_plan[{pattern:?}] = {style}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: serde_json::Value) -> Result<TpPlan> {
        let mut json = serde_json::json!({
            "model_type": "llama", "vocab_size": 32, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2});
        if let (Some(obj), Some(extra)) = (json.as_object_mut(), extra.as_object()) {
            obj.extend(extra.clone());
        }
        let config = patchwork_models::family::decoder_config(&json, "config.json").unwrap();
        TpPlan::of(&config)
    }

    #[test]
    fn the_default_plan_splits_attention_mlp_and_experts() {
        let p = plan(serde_json::json!({})).unwrap();
        assert_eq!(p.style("model.layers.3.self_attn.q_proj"), Some("colwise"));
        assert_eq!(p.style("model.layers.12.mlp.down_proj"), Some("rowwise"));
        assert_eq!(p.style("model.layers.0.mlp.shared_expert.down_proj"), None);
        assert_eq!(p.style("lm_head"), None);
        let attn = [
            ("q_proj", "colwise"),
            ("k_proj", "colwise"),
            ("v_proj", "colwise"),
            ("o_proj", "rowwise"),
        ];
        assert!(p.splits("model.layers.0.self_attn", &attn).unwrap());
        let mlp = [
            ("gate_proj", "colwise"),
            ("up_proj", "colwise"),
            ("down_proj", "rowwise"),
        ];
        assert!(!p.splits("model.layers.0.mlp.shared_expert", &mlp).unwrap());
    }

    #[test]
    fn a_config_plan_is_read_with_transformers_meanings_and_checked() {
        let p = plan(serde_json::json!({"base_model_tp_plan": {
            "layers.*.self_attn.q_proj": "colwise", "layers.*.self_attn.k_proj": "colwise",
            "layers.*.self_attn.v_proj": "colwise", "layers.*.self_attn.o_proj": "rowwise"}}))
        .unwrap();
        let mlp = [
            ("gate_proj", "colwise"),
            ("up_proj", "colwise"),
            ("down_proj", "rowwise"),
        ];
        assert!(
            !p.splits("model.layers.0.mlp", &mlp).unwrap(),
            "no MLP entry: replicated"
        );
        let half = plan(serde_json::json!({"base_model_tp_plan": {
            "layers.*.mlp.gate_proj": "colwise", "layers.*.mlp.down_proj": "rowwise"}}))
        .unwrap();
        let err = half
            .splits("model.layers.0.mlp", &mlp)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers.0.mlp.up_proj: absent (needs colwise)"),
            "{err}"
        );
        for (entry, style) in [
            ("layers.*.self_attn.q_proj", "colwise_rep"),
            ("embed_tokens", "rowwise"),
            ("layers.*.mlp.gate_proj", "rowwise"),
        ] {
            let err = plan(serde_json::json!({"base_model_tp_plan": {entry: style}}))
                .unwrap_err()
                .to_string();
            assert!(err.contains(entry) && err.contains(style), "{err}");
        }
    }
}
