//! Rollouts from JSON, under the names the engines and transformers give the fields (the
//! table in [the module docs](super)).

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{Map, Value};

use super::{Rollout, sglang_routed_experts};
use crate::decoder::DecoderConfig;
use crate::{Error, Result};

/// The largest rollouts file read (JSON Lines are parsed one line at a time).
pub const MAX_ROLLOUTS_BYTES: u64 = 4 << 30;

/// Names of the prompt's token ids: ours, vLLM's `RequestOutput`, SGLang's and transformers'.
const PROMPT: &[&str] = &["prompt_ids", "prompt_token_ids", "input_ids"];
/// Names of the completion's token ids: ours, vLLM's `CompletionOutput`, SGLang's response.
const COMPLETION: &[&str] = &["completion_ids", "token_ids", "output_ids"];
/// Names of the routing's first position: ours, SGLang's request parameter.
const START: &[&str] = &["routed_experts_start", "routed_experts_start_len"];

impl Rollout {
    /// Reads one rollout from a JSON object (`source` names it in errors), accepting the
    /// field names of vLLM, SGLang and transformers ([the module docs](super)); SGLang's
    /// base64 routing is decoded for `config`'s layer layout.
    ///
    /// ```
    /// use patchwork_models::rollouts::Rollout;
    /// let config = serde_json::json!({
    ///     "model_type": "qwen3_moe", "vocab_size": 32, "hidden_size": 16,
    ///     "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    ///     "num_key_value_heads": 1, "head_dim": 8, "num_experts": 4,
    ///     "num_experts_per_tok": 2, "moe_intermediate_size": 8,
    /// });
    /// let config = patchwork_models::family::decoder_config(&config, "config")?;
    /// // vLLM's names: prompt_token_ids, then a CompletionOutput's token_ids and routed_experts.
    /// let line = serde_json::json!({
    ///     "prompt_token_ids": [3, 4], "token_ids": [5],
    ///     "routed_experts": [[[0, 1]], [[2, 3]]],
    /// });
    /// let rollout = Rollout::from_json(&line, "line 1", &config)?;
    /// assert_eq!((rollout.token_ids.as_slice(), rollout.prompt_len), (&[3, 4, 5][..], 2));
    /// assert_eq!(rollout.routed_experts.unwrap().dims(), [2, 1, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_json(value: &Value, source: &str, config: &DecoderConfig) -> Result<Self> {
        let err = |message: String| Error::input(source, message);
        let obj = value
            .as_object()
            .ok_or_else(|| err(format!("expected a JSON object, found {}", kind(value))))?;
        let (prompt_key, prompt) = pick(source, obj, PROMPT)?
            .ok_or_else(|| err(format!("no prompt ids: one of {PROMPT:?}")))?;
        let (completion_key, completion) = pick(source, obj, COMPLETION)?
            .ok_or_else(|| err(format!("no completion ids: one of {COMPLETION:?}")))?;
        let prompt = token_ids(prompt_key, prompt).map_err(err)?;
        let completion = token_ids(completion_key, completion).map_err(err)?;
        let meta = obj.get("meta_info").and_then(Value::as_object);
        for (key, len) in [
            ("prompt_tokens", prompt.len()),
            ("completion_tokens", completion.len()),
        ] {
            if let Some(n) = meta.and_then(|m| m.get(key))
                && n.as_u64() != Some(len as u64)
            {
                return Err(err(format!(
                    "meta_info.{key} is {n} but {} has {len} ids",
                    if key == "prompt_tokens" {
                        prompt_key
                    } else {
                        completion_key
                    }
                )));
            }
        }
        let mut rollout = Rollout::new(&prompt, &completion);
        if let Some((key, start)) = pick(source, obj, START)? {
            rollout.routed_experts_start = start
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| err(format!("{key}: expected a position, found {start}")))?;
        }
        // vLLM: `routed_experts` beside the ids; SGLang: `meta_info` (`/generate`) or `sglext`
        // (OpenAI endpoints), with `routed_experts_dtype` beside it.
        let holder = [
            Some(obj),
            meta,
            obj.get("sglext").and_then(Value::as_object),
        ]
        .into_iter()
        .flatten()
        .find(|o| o.get("routed_experts").is_some_and(|v| !v.is_null()));
        if let Some(holder) = holder {
            let routed = &holder["routed_experts"];
            let ids = match routed {
                Value::String(text) => {
                    let dtype = holder
                        .get("routed_experts_dtype")
                        .or(obj.get("routed_experts_dtype"))
                        .and_then(Value::as_str);
                    sglang_routed_experts(text, dtype, config).map_err(|e| match e {
                        Error::Input { name, message } => {
                            err(format!("{name} (SGLang's base64): {message}"))
                        }
                        other => err(format!("routed_experts (SGLang's base64): {other}")),
                    })?
                }
                Value::Array(rows) => nested_ids(rows, config).map_err(err)?,
                other => {
                    return Err(err(format!(
                        "routed_experts: expected [tokens][layers][top_k] integers (vLLM) or a base64 string (SGLang), found {}",
                        kind(other)
                    )));
                }
            };
            rollout.routed_experts = Some(ids);
        }
        Ok(rollout)
    }
}

/// Reads the rollouts of `path`: JSON Lines (one object per line, blank lines skipped) or one
/// JSON array of objects, each read by [`Rollout::from_json`]. Errors name the file and the
/// line (or the array index).
pub fn read_rollouts(path: &Path, config: &DecoderConfig) -> Result<Vec<Rollout>> {
    let bytes = patch_checkpoint::files::read_bounded(path, MAX_ROLLOUTS_BYTES)?;
    let file = path.display();
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::input(file.to_string(), format!("not UTF-8: {e}")))?;
    let mut rollouts = Vec::new();
    if text.trim_start().starts_with('[') {
        patch_checkpoint::memory::check(
            (bytes.len() as u128) * 16,
            || format!("parsing the JSON array {file}"),
            "write the rollouts as JSON Lines, which are parsed a line at a time",
        )?;
        let all: Value = serde_json::from_str(text)
            .map_err(|e| Error::input(file.to_string(), format!("invalid JSON: {e}")))?;
        for (i, v) in all.as_array().into_iter().flatten().enumerate() {
            rollouts.push(Rollout::from_json(v, &format!("{file} [{i}]"), config)?);
        }
    } else {
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let source = format!("{file} line {}", n + 1);
            let v: Value = serde_json::from_str(line)
                .map_err(|e| Error::input(&source, format!("invalid JSON: {e}")))?;
            rollouts.push(Rollout::from_json(&v, &source, config)?);
        }
    }
    if rollouts.is_empty() {
        return Err(Error::input(file.to_string(), "no rollout in the file"));
    }
    Ok(rollouts)
}

/// The one field of `names` present in `obj` (null counts as absent), or an error when
/// several are.
fn pick<'a>(
    source: &str,
    obj: &'a Map<String, Value>,
    names: &[&'static str],
) -> Result<Option<(&'static str, &'a Value)>> {
    let found: Vec<(&'static str, &Value)> = names
        .iter()
        .filter_map(|&n| obj.get(n).filter(|v| !v.is_null()).map(|v| (n, v)))
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        [(a, _), (b, _), ..] => Err(Error::input(
            source,
            format!("both {a} and {b} are given: they name the same thing, give one"),
        )),
    }
}

/// A JSON array of token ids.
fn token_ids(key: &str, value: &Value) -> std::result::Result<Vec<u32>, String> {
    let items = value.as_array().ok_or_else(|| {
        format!(
            "{key}: expected an array of token ids, found {}",
            kind(value)
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("{key}[{i}]: expected a token id, found {v}"))
        })
        .collect()
}

/// vLLM's `routed_experts` as nested arrays `[tokens][layers][top_k]` (numpy's `tolist()`).
fn nested_ids(rows: &[Value], config: &DecoderConfig) -> std::result::Result<Tensor, String> {
    let shape_of = |v: &Value| v.as_array().map(Vec::len);
    let layers = match rows.first() {
        Some(row) => shape_of(row).unwrap_or(0),
        None => crate::routing::moe_layers(config).len(),
    };
    let k = rows
        .first()
        .and_then(|r| r.get(0))
        .and_then(shape_of)
        .or_else(|| config.moe.as_ref().map(|m| m.num_experts_per_tok))
        .unwrap_or(0);
    let mut flat = Vec::with_capacity(rows.len().saturating_mul(layers).saturating_mul(k));
    for (t, row) in rows.iter().enumerate() {
        let row = row
            .as_array()
            .filter(|r| r.len() == layers)
            .ok_or_else(|| {
                format!("routed_experts[{t}]: expected {layers} layers like row 0, found {row}")
            })?;
        for (l, ids) in row.iter().enumerate() {
            let ids = ids.as_array().filter(|i| i.len() == k).ok_or_else(|| {
                format!(
                    "routed_experts[{t}][{l}]: expected {k} expert ids like [0][0], found {ids}"
                )
            })?;
            for (j, id) in ids.iter().enumerate() {
                flat.push(id.as_i64().ok_or_else(|| {
                    format!("routed_experts[{t}][{l}][{j}]: expected an integer, found {id}")
                })?);
            }
        }
    }
    Tensor::from_vec(flat, (rows.len(), layers, k), &Device::Cpu).map_err(|e| e.to_string())
}

/// What kind of JSON value `v` is, for errors.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
