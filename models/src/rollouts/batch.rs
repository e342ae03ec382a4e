//! Many rollouts of different lengths as one padded training batch.

use std::collections::BTreeMap;
use std::str::FromStr;

use candle_core::{Device, Tensor};

use super::Rollout;
use crate::decoder::DecoderConfig;
use crate::loss::IGNORE_INDEX;
use crate::routing::moe_layers;
use crate::{Error, ForwardOptions, Result};

/// Which side of a row padding fills (transformers' `padding_side`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Padding first, the sequence ending at the last column (generation's layout).
    Left,
    /// The sequence first, padding after it (training's usual layout).
    #[default]
    Right,
}

impl FromStr for Padding {
    type Err = Error;

    /// `left` or `right`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "left" => Ok(Self::Left),
            "right" => Ok(Self::Right),
            other => Err(Error::input(
                "padding",
                format!("{other:?}: expected left or right"),
            )),
        }
    }
}

/// A padded training batch made from rollouts ([`RolloutBatch::from_rollouts`]): `B` rows of
/// `T` columns, `T` the longest rollout. Every tensor is i64 and on the CPU; the per-token
/// tensors of the routing are flattened row-major like `input_ids` (token `(b, t)` is row
/// `b * T + t`).
#[derive(Clone, Debug)]
pub struct RolloutBatch {
    /// `[B, T]`: each rollout's tokens, padding elsewhere (the pad token id).
    pub input_ids: Tensor,
    /// `[B, T]`: 1 on the rollout's tokens, 0 on padding.
    pub attention_mask: Tensor,
    /// `[B, T]`: the token id on completion positions, -100 on prompt and padding positions
    /// (not shifted: the loss shifts, as transformers' `ForCausalLMLoss`).
    pub labels: Tensor,
    /// `[B * T, top_k]` per MoE layer (absolute index): the recorded experts at the positions
    /// that went through the engine's forward pass, -1 (route freely) at every other position
    /// and on padding. Empty when no rollout carries routing.
    pub forced_experts: BTreeMap<usize, Tensor>,
    /// Per row: the column of its first token (0 with right padding).
    pub starts: Vec<usize>,
    /// Per row: its rollout's length, prompt and completion.
    pub lengths: Vec<usize>,
    /// Per row: its rollout's prompt length.
    pub prompt_lens: Vec<usize>,
}

impl RolloutBatch {
    /// Pads `rollouts` into one batch for `config`'s model, aligning tokens, mask, labels and
    /// routing on the same positions (see [the module docs](super)). `pad_token_id` fills the
    /// padding (`None`: the config's `pad_token_id`, else its first eos token, else 0; padding
    /// is masked, so the choice never changes a result). An error names the rollout and the
    /// lengths or the value that do not line up.
    pub fn from_rollouts(
        rollouts: &[Rollout],
        config: &DecoderConfig,
        padding: Padding,
        pad_token_id: Option<u32>,
    ) -> Result<Self> {
        if rollouts.is_empty() {
            return Err(Error::input("rollouts", "no rollout to batch"));
        }
        let pad = pad_token_id
            .or(config.pad_token_id)
            .or(config.eos_token_ids.first().copied())
            .unwrap_or(0);
        if pad as usize >= config.vocab_size {
            return Err(Error::input(
                "pad_token_id",
                format!(
                    "{pad} is not below the vocabulary size {}",
                    config.vocab_size
                ),
            ));
        }
        let mut routed = Vec::with_capacity(rollouts.len());
        for (i, r) in rollouts.iter().enumerate() {
            r.check(i, config)?;
            routed.push(r.experts_by_position(i, config)?);
        }
        let batch = rollouts.len();
        let seq = rollouts.iter().map(Rollout::len).max().unwrap_or(0);
        let cells = batch
            .checked_mul(seq)
            .ok_or_else(|| Error::input("rollouts", format!("{batch} x {seq} overflows")))?;
        let layers = if routed.iter().any(Option::is_some) {
            moe_layers(config).len()
        } else {
            0
        };
        let k = config.moe.as_ref().map_or(0, |m| m.num_experts_per_tok) as u128;
        // i64 tokens, mask and labels, and the routing of every MoE layer.
        patch_checkpoint::memory::check(
            (cells as u128) * 8 * (3 + layers as u128 * k),
            || format!("a batch of {batch} rollouts padded to {seq} tokens"),
            "batch fewer rollouts at once, or rollouts of closer lengths",
        )?;
        let mut input_ids = vec![pad as i64; cells];
        let mut mask = vec![0i64; cells];
        let mut labels = vec![IGNORE_INDEX; cells];
        let starts: Vec<usize> = rollouts
            .iter()
            .map(|r| match padding {
                Padding::Left => seq - r.len(),
                Padding::Right => 0,
            })
            .collect();
        for (b, r) in rollouts.iter().enumerate() {
            let row = b * seq + starts[b];
            for (t, &id) in r.token_ids.iter().enumerate() {
                input_ids[row + t] = id as i64;
                mask[row + t] = 1;
                if t >= r.prompt_len {
                    labels[row + t] = id as i64;
                }
            }
        }
        let forced_experts = if routed.iter().any(Option::is_some) {
            let k = config.moe()?.num_experts_per_tok;
            let size = cells.checked_mul(k).ok_or_else(|| {
                Error::input("rollouts", format!("{cells} tokens x {k} overflows"))
            })?;
            let mut out = BTreeMap::new();
            for layer in moe_layers(config) {
                let mut ids = vec![-1i64; size];
                for (b, by_layer) in routed.iter().enumerate() {
                    if let Some(recorded) = by_layer.as_ref().and_then(|m| m.get(&layer)) {
                        let at = (b * seq + starts[b]) * k;
                        ids[at..at + recorded.len()].copy_from_slice(recorded);
                    }
                }
                out.insert(layer, Tensor::from_vec(ids, (cells, k), &Device::Cpu)?);
            }
            out
        } else {
            BTreeMap::new()
        };
        let grid = |v: Vec<i64>| Tensor::from_vec(v, (batch, seq), &Device::Cpu);
        Ok(Self {
            input_ids: grid(input_ids)?,
            attention_mask: grid(mask)?,
            labels: grid(labels)?,
            forced_experts,
            starts,
            lengths: rollouts.iter().map(Rollout::len).collect(),
            prompt_lens: rollouts.iter().map(|r| r.prompt_len).collect(),
        })
    }

    /// Rows (`B`).
    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }

    /// Columns (`T`, the longest rollout).
    pub fn seq_len(&self) -> usize {
        self.input_ids.dims().get(1).copied().unwrap_or(0)
    }

    /// The options of a training pass over this batch: its labels, its routing replayed, and
    /// router outputs returned (the MoE aux loss joins the loss). Pass `input_ids` and
    /// `attention_mask` to [`crate::CausalLM::forward_with`] with them.
    pub fn forward_options(&self) -> ForwardOptions {
        ForwardOptions {
            labels: Some(self.labels.clone()),
            forced_experts: self.forced_experts.clone(),
            output_router_logits: Some(true),
            ..ForwardOptions::default()
        }
    }

    /// The batch as the tensors `patchwork forward` reads: `input_ids`, `attention_mask`,
    /// `labels` and `selected_experts.L` per MoE layer `L` (one file serves both `--inputs`
    /// and `--forced-experts`).
    pub fn to_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::from([
            ("input_ids".to_string(), self.input_ids.clone()),
            ("attention_mask".to_string(), self.attention_mask.clone()),
            ("labels".to_string(), self.labels.clone()),
        ]);
        for (layer, ids) in &self.forced_experts {
            out.insert(format!("selected_experts.{layer}"), ids.clone());
        }
        out
    }
}
