//! One rollout: a prompt, the completion generated from it, and the routing the engine
//! recorded for it; and how its routing lines up with its tokens.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::decoder::DecoderConfig;
use crate::routing::{experts_from_vllm, moe_layers};
use crate::{Error, Result};

/// One rollout as an inference engine returns it (see [the module docs](super) for how its
/// rows line up with its tokens).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use patchwork_models::rollouts::Rollout;
/// // 3 prompt tokens, 2 generated: vLLM recorded the 4 tokens that went through a pass.
/// let routed = Tensor::zeros((4, 2, 1), candle_core::DType::I64, &Device::Cpu)?;
/// let rollout = Rollout::new(&[5, 6, 7], &[8, 9]).with_routed_experts(routed);
/// assert_eq!((rollout.len(), rollout.prompt_len, rollout.completion_len()), (5, 3, 2));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Rollout {
    /// The sequence: the prompt's token ids, then the completion's.
    pub token_ids: Vec<u32>,
    /// How many of `token_ids` are the prompt (vLLM's `prompt_token_ids`, SGLang's
    /// `meta_info.prompt_tokens`).
    pub prompt_len: usize,
    /// The experts each routed token went to, `[rows, layers, top_k]` (any integer dtype):
    /// vLLM's `routed_experts` layout, the layer axis counting every decoder layer or the MoE
    /// layers only. Row `r` is position `routed_experts_start + r`. `None`: every token
    /// routes freely.
    pub routed_experts: Option<Tensor>,
    /// The position of the first row of `routed_experts` (SGLang's
    /// `routed_experts_start_len`); 0 for vLLM and by default.
    pub routed_experts_start: usize,
}

impl Rollout {
    /// A rollout of `prompt` then `completion`, without routing.
    pub fn new(prompt: &[u32], completion: &[u32]) -> Self {
        Self {
            token_ids: prompt.iter().chain(completion).copied().collect(),
            prompt_len: prompt.len(),
            routed_experts: None,
            routed_experts_start: 0,
        }
    }

    /// With the routing the engine recorded (`[rows, layers, top_k]`, vLLM's layout; SGLang's
    /// string goes through [`super::sglang_routed_experts`] first).
    pub fn with_routed_experts(mut self, routed_experts: Tensor) -> Self {
        self.routed_experts = Some(routed_experts);
        self
    }

    /// With the routing's first row at position `start` (SGLang's `routed_experts_start_len`).
    pub fn with_routed_experts_start(mut self, start: usize) -> Self {
        self.routed_experts_start = start;
        self
    }

    /// Tokens in the sequence, prompt and completion.
    pub fn len(&self) -> usize {
        self.token_ids.len()
    }

    /// Whether the sequence has no token.
    pub fn is_empty(&self) -> bool {
        self.token_ids.is_empty()
    }

    /// Tokens generated after the prompt (0 when `prompt_len` exceeds the sequence).
    pub fn completion_len(&self) -> usize {
        self.len().saturating_sub(self.prompt_len)
    }

    /// Checks the rollout (`index` names it in errors) against `config`: a non-empty sequence,
    /// ids below the vocabulary, a prompt no longer than it, and routing rows that line up.
    pub(crate) fn check(&self, index: usize, config: &DecoderConfig) -> Result<()> {
        let name = format!("rollout {index}");
        if self.is_empty() {
            return Err(Error::input(name, "no token ids"));
        }
        if self.prompt_len > self.len() {
            return Err(Error::input(
                name,
                format!(
                    "prompt_len {} is longer than its {} token ids",
                    self.prompt_len,
                    self.len()
                ),
            ));
        }
        if let Some((t, &id)) = self
            .token_ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= config.vocab_size)
        {
            return Err(Error::TokenOutOfRange {
                input: "rollouts".into(),
                row: index,
                col: t,
                token: id as i64,
                vocab_size: config.vocab_size,
            });
        }
        Ok(())
    }

    /// The expert ids of each position of the sequence, by absolute MoE layer index
    /// (`len * top_k` ids each, -1 where no routing was recorded: before
    /// `routed_experts_start`, the last token, or every token without routing). Errors name
    /// the rollout (`index`) and the lengths that do not line up.
    pub(crate) fn experts_by_position(
        &self,
        index: usize,
        config: &DecoderConfig,
    ) -> Result<Option<BTreeMap<usize, Vec<i64>>>> {
        let Some(routed) = &self.routed_experts else {
            return Ok(None);
        };
        let name = format!("rollout {index}");
        let len = self.len();
        let start = self.routed_experts_start;
        let rows = routed.dims().first().copied().unwrap_or(0);
        let lengths = format!(
            "{len} tokens ({} prompt + {} completion)",
            self.prompt_len,
            self.completion_len()
        );
        // The engines record every token but the last: rows start..len - 1.
        let routed_positions = len - 1;
        let covered = start.checked_add(rows).ok_or_else(|| {
            Error::input(
                &name,
                format!("routed_experts_start {start} + {rows} rows overflows"),
            )
        })?;
        if covered != routed_positions && covered != len {
            let expected = routed_positions.checked_sub(start).map_or_else(
                || format!("routed_experts_start {start} to be below {len}"),
                |n| {
                    format!(
                        "{n} rows (every token but the last, as vLLM and SGLang record) or {}",
                        n + 1
                    )
                },
            );
            return Err(Error::input(
                name,
                format!(
                    "routed_experts has {rows} rows from position {start}, for a sequence of {lengths}: expected {expected}"
                ),
            ));
        }
        let by_layer = experts_from_vllm(routed, config).map_err(|e| match e {
            Error::Input {
                name: what,
                message,
            } => Error::input(format!("{name} {what}"), message),
            other => Error::input(name.clone(), other.to_string()),
        })?;
        let k = config.moe()?.num_experts_per_tok;
        let size = |n: usize| {
            n.checked_mul(k).ok_or_else(|| {
                Error::input(&name, format!("{n} positions x {k} experts overflows"))
            })
        };
        let (total, first) = (size(len)?, size(start)?);
        let used = size(routed_positions.saturating_sub(start))?;
        let mut out = BTreeMap::new();
        for layer in moe_layers(config) {
            let mut ids = vec![-1i64; total];
            if let Some(t) = by_layer.get(&layer) {
                let recorded: Vec<i64> = t.flatten_all()?.to_vec1()?;
                // A row for the last position (some engines send one) is never used: that
                // token went through no pass, so whatever the row holds routes nothing.
                ids[first..first + used].copy_from_slice(&recorded[..used]);
            }
            out.insert(layer, ids);
        }
        Ok(Some(out))
    }
}
