//! Checks of config values that serde cannot express (ranges, cross-key constraints, loosely
//! typed keys), with errors naming the config's source and the key.

use serde_json::Value;

use crate::decoder::activation::HiddenAct;
use crate::{Error, Result};

/// The largest sizes a config may give. They sit far above every published model (the largest
/// have 126 layers, a hidden size of 16,384, 53,248-wide MLPs, 262,144 vocabulary entries and
/// 384 experts) and low enough that a corrupt value is an error before anything is computed
/// or allocated from it. A real model beyond them needs these constants raised.
pub mod bounds {
    /// Decoder layers.
    pub const MAX_LAYERS: usize = 1 << 12;
    /// Widths: `hidden_size`, the intermediate sizes, `head_dim`, heads x `head_dim`.
    pub const MAX_WIDTH: usize = 1 << 20;
    /// Attention heads (query or key/value).
    pub const MAX_HEADS: usize = 1 << 12;
    /// Vocabulary entries.
    pub const MAX_VOCAB: usize = 1 << 24;
    /// Routed experts.
    pub const MAX_EXPERTS: usize = 1 << 16;
    /// `max_position_embeddings`, and any other position count.
    pub const MAX_POSITIONS: usize = 1 << 31;
}

/// Reads and checks keys of a config JSON object, with errors naming the source and the key.
///
/// Family configs deserialize with serde; this covers the values serde cannot check (ranges,
/// cross-key constraints) and the loosely typed keys (`eos_token_id` as an int or a list).
#[derive(Clone, Copy, Debug)]
pub struct ConfigCheck<'a> {
    source_name: &'a str,
}

impl<'a> ConfigCheck<'a> {
    /// Checks for the config read from `source_name`.
    pub fn new(source_name: &'a str) -> Self {
        Self { source_name }
    }

    /// The error for `key`.
    pub fn error(&self, key: &str, message: impl Into<String>) -> Error {
        Error::config(self.source_name, key, message)
    }

    /// `value` must be at least 1.
    pub fn positive(&self, key: &str, value: usize) -> Result<usize> {
        if value == 0 {
            return Err(self.error(key, "must be at least 1, found 0"));
        }
        Ok(value)
    }

    /// `value` must be in `1..=max`.
    pub fn size(&self, key: &str, value: usize, max: usize) -> Result<usize> {
        self.positive(key, value)?;
        if value > max {
            return Err(self.error(
                key,
                format!("{value} is over the limit of {max} (patchwork_models::decoder::bounds)"),
            ));
        }
        Ok(value)
    }

    /// `value` must be finite and strictly positive.
    pub fn positive_f64(&self, key: &str, value: f64) -> Result<f64> {
        if !(value.is_finite() && value > 0.0) {
            return Err(self.error(key, format!("must be a positive number, found {value}")));
        }
        Ok(value)
    }

    /// `value` must be finite (zero and negative allowed).
    pub fn finite(&self, key: &str, value: f64) -> Result<f64> {
        if !value.is_finite() {
            return Err(self.error(key, format!("must be a finite number, found {value}")));
        }
        Ok(value)
    }

    /// The supported activation named `name`.
    pub fn hidden_act(&self, key: &str, name: &str) -> Result<HiddenAct> {
        HiddenAct::from_name(name).ok_or_else(|| {
            self.error(
                key,
                format!(
                    "unsupported activation {name:?} (supported: {})",
                    HiddenAct::SUPPORTED
                ),
            )
        })
    }

    /// A token id key: absent/null, an integer, or (for eos) a list of integers, each below
    /// `vocab_size`.
    pub fn token_ids(
        &self,
        key: &str,
        value: Option<&Value>,
        vocab_size: usize,
    ) -> Result<Vec<u32>> {
        let one = |v: &Value| -> Result<u32> {
            let id = v.as_u64().ok_or_else(|| {
                self.error(
                    key,
                    format!("expected a token id (a non-negative integer), found {v}"),
                )
            })?;
            if id >= vocab_size as u64 {
                return Err(self.error(
                    key,
                    format!("token id {id} is not below vocab_size {vocab_size}"),
                ));
            }
            Ok(id as u32)
        };
        match value {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }

    /// Head layout: `num_attention_heads`, `num_key_value_heads` dividing it, `head_dim`
    /// given or `hidden_size / num_attention_heads` (which must then divide evenly), and even
    /// (rotary embeddings rotate pairs).
    pub fn heads(
        &self,
        hidden_size: usize,
        num_attention_heads: usize,
        num_key_value_heads: Option<usize>,
        head_dim: Option<usize>,
    ) -> Result<(usize, usize, usize)> {
        let heads = self.size(
            "num_attention_heads",
            num_attention_heads,
            bounds::MAX_HEADS,
        )?;
        let kv = self.size(
            "num_key_value_heads",
            num_key_value_heads.unwrap_or(heads),
            bounds::MAX_HEADS,
        )?;
        if !heads.is_multiple_of(kv) {
            return Err(self.error(
                "num_key_value_heads",
                format!("{kv} does not divide num_attention_heads = {heads}"),
            ));
        }
        let head_dim = match head_dim {
            Some(d) => self.size("head_dim", d, bounds::MAX_WIDTH)?,
            None => {
                if !hidden_size.is_multiple_of(heads) {
                    return Err(self.error(
                        "num_attention_heads",
                        format!(
                            "{heads} does not divide hidden_size = {hidden_size}, and no head_dim is given"
                        ),
                    ));
                }
                hidden_size / heads
            }
        };
        if heads * head_dim > bounds::MAX_WIDTH {
            return Err(self.error(
                "head_dim",
                format!(
                    "{heads} heads of {head_dim} make {}, over the limit of {} (patchwork_models::decoder::bounds)",
                    heads * head_dim,
                    bounds::MAX_WIDTH
                ),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(self.error(
                "head_dim",
                format!("must be even for rotary embeddings, found {head_dim}"),
            ));
        }
        Ok((heads, kv, head_dim))
    }
}
