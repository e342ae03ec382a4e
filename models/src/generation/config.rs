//! What a generation is asked to do ([`GenerationConfig`], [`Sampling`]), the defaults a
//! checkpoint publishes ([`GenerationDefaults`]), and what it returns ([`Generation`]).

use candle_core::Tensor;

use crate::{Error, Result};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on ties, as `argmax`).
    Greedy,
    /// A draw from the distribution after, in transformers' order, temperature, top-k and
    /// top-p; reproducible for a given seed (and `rand` version).
    Sample {
        /// Logits are divided by it; must be positive.
        temperature: f64,
        /// Keep only the `k` most likely tokens (ties at the k-th kept).
        top_k: Option<usize>,
        /// Keep the smallest set of most likely tokens whose probability reaches `p`, in (0, 1].
        top_p: Option<f64>,
        /// Seed of the random generator.
        seed: u64,
    },
}

/// Generation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// Tokens to generate at most per row.
    pub max_new_tokens: usize,
    /// End-of-sequence tokens are suppressed until this many were generated (transformers'
    /// `min_new_tokens`).
    pub min_new_tokens: usize,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Tokens that end a row; `None` takes the model's ([`CausalLM::eos_token_ids`](crate::CausalLM::eos_token_ids):
    /// `generation_config.json`'s, else `config.json`'s `eos_token_id`).
    pub eos_token_ids: Option<Vec<u32>>,
    /// Keep generating after an end-of-sequence token (it is still emitted).
    pub ignore_eos: bool,
    /// Token that left-pads shorter prompts and fills finished rows; `None` takes the
    /// model's `pad_token_id` (generation config, then config), else its first eos token, else
    /// 0. Padding is masked out, so the
    /// choice never changes the result.
    pub pad_token_id: Option<u32>,
    /// Return each step's logits (float32 `[batch, vocab]`, before any processing).
    pub output_logits: bool,
    /// Record the experts every token of each sequence was routed to (MoE models), ready to
    /// replay in a training pass over the sequence ([`Generation::routed_experts`]).
    pub output_routed_experts: bool,
}

/// The special token ids a checkpoint publishes in `generation_config.json`; where given they
/// override `config.json`'s, as transformers' `GenerationConfig` does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerationDefaults {
    /// `bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (an id or a list).
    pub eos_token_ids: Option<Vec<u32>>,
    /// `pad_token_id`.
    pub pad_token_id: Option<u32>,
}

impl GenerationDefaults {
    /// Reads `generation_config.json` at `path`; every id must be below `vocab_size`.
    pub fn from_file(path: &std::path::Path, vocab_size: usize) -> Result<Self> {
        let json = patch_checkpoint::files::read_json(path)?;
        let source = path.display().to_string();
        let check = crate::decoder::ConfigCheck::new(&source);
        let ids = |key: &str| -> Result<Option<Vec<u32>>> {
            Ok(match json.get(key) {
                None | Some(serde_json::Value::Null) => None,
                v => Some(check.token_ids(key, v, vocab_size)?),
            })
        };
        let first =
            |key: &str| -> Result<Option<u32>> { Ok(ids(key)?.and_then(|v| v.first().copied())) };
        Ok(Self {
            bos_token_id: first("bos_token_id")?,
            eos_token_ids: ids("eos_token_id")?,
            pad_token_id: first("pad_token_id")?,
        })
    }
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            min_new_tokens: 0,
            sampling: Sampling::Greedy,
            eos_token_ids: None,
            ignore_eos: false,
            pad_token_id: None,
            output_logits: false,
            output_routed_experts: false,
        }
    }
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            ..Self::default()
        }
    }

    /// Checks every setting is in range.
    pub fn validate(&self) -> Result<()> {
        if let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = &self.sampling
        {
            if !(temperature.is_finite() && *temperature > 0.0) {
                return Err(Error::Generation {
                    name: "temperature",
                    value: temperature.to_string(),
                    message:
                        "must be a positive number (use greedy decoding for a deterministic argmax)"
                            .into(),
                });
            }
            if *top_k == Some(0) {
                return Err(Error::Generation {
                    name: "top_k",
                    value: "0".into(),
                    message: "must be at least 1".into(),
                });
            }
            if let Some(p) = top_p
                && !(*p > 0.0 && *p <= 1.0)
            {
                return Err(Error::Generation {
                    name: "top_p",
                    value: p.to_string(),
                    message: "must be in (0, 1]".into(),
                });
            }
        }
        Ok(())
    }
}

/// What [`CausalLM::generate`](crate::CausalLM::generate) returns.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Per row: its prompt, then the generated tokens (up to and including the end-of-sequence
    /// token that stopped it).
    pub sequences: Vec<Vec<u32>>,
    /// Per row: the generated tokens only.
    pub new_tokens: Vec<Vec<u32>>,
    /// Each step's logits `[batch, vocab]`, when asked for (rows already finished included).
    pub logits: Vec<Tensor>,
    /// Per row, when asked for: the experts each token of `sequences[row]` was routed to,
    /// `[len, num_moe_layers, top_k]` (i64), vLLM's `routed_experts` layout
    /// ([`crate::routing::experts_from_vllm`] turns it into forced experts). The last token was
    /// never run through the model: its row is -1 (routes freely on replay).
    pub routed_experts: Vec<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_errors() {
        for sampling in [
            Sampling::Sample {
                temperature: 0.0,
                top_k: None,
                top_p: None,
                seed: 0,
            },
            Sampling::Sample {
                temperature: 1.0,
                top_k: Some(0),
                top_p: None,
                seed: 0,
            },
            Sampling::Sample {
                temperature: 1.0,
                top_k: None,
                top_p: Some(1.5),
                seed: 0,
            },
        ] {
            let cfg = GenerationConfig {
                sampling,
                ..GenerationConfig::default()
            };
            let e = cfg.validate().err().unwrap().to_string();
            assert!(e.contains("generation setting "), "{e}");
        }
    }
}
