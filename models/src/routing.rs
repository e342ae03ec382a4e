//! Recorded MoE routing, ready to replay: the expert ids each MoE layer chose, keyed by
//! absolute layer index as [`ForwardOptions::forced_experts`](crate::ForwardOptions) takes them.
//!
//! Replaying keeps the recorded experts and recomputes their scores with the router's current
//! weights (Megatron-style replay, as the upstream page's replayable router does), so gradients
//! would flow through the active parameters while the expert choice stays fixed. The forced ids
//! reach the router through the forward context, never through instance state, so a model can
//! serve recorded and free passes from several threads at once.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use crate::decoder::{DecoderConfig, FeedForwardKind, RouterRecord};
use crate::{Error, Result};

/// The selected experts of a recorded pass (`output_router_logits`), by absolute layer index:
/// what `forced_experts` replays.
pub fn recorded_experts(records: &[RouterRecord]) -> BTreeMap<usize, Tensor> {
    records
        .iter()
        .map(|r| (r.layer, r.router.indices.clone()))
        .collect()
}

/// The absolute indices of the MoE layers of `config`, in order.
pub fn moe_layers(config: &DecoderConfig) -> Vec<usize> {
    (0..config.num_hidden_layers)
        .filter(|&i| config.feed_forward_kind(i) == FeedForwardKind::Sparse)
        .collect()
}

/// Converts vLLM's `routed_experts` (`CompletionOutput.routed_experts` with
/// `enable_return_routed_experts=True`: ids `[seq_len, num_moe_layers, top_k]`, any integer
/// dtype) into per-layer expert ids for `forced_experts`; the second axis counts MoE layers in
/// order, which are mapped to their absolute indices in `config`.
pub fn experts_from_vllm(
    routed_experts: &Tensor,
    config: &DecoderConfig,
) -> Result<BTreeMap<usize, Tensor>> {
    let moe = config.moe()?;
    let layers = moe_layers(config);
    let (seq, n_layers, k) = routed_experts.dims3().map_err(|_| {
        Error::input(
            "routed_experts",
            format!(
                "expected shape [seq_len, num_moe_layers, top_k], found {:?}",
                routed_experts.dims()
            ),
        )
    })?;
    if n_layers != layers.len() || k != moe.num_experts_per_tok {
        return Err(Error::input(
            "routed_experts",
            format!(
                "shape [{seq}, {n_layers}, {k}]: this model has {} MoE layers choosing {} experts each",
                layers.len(),
                moe.num_experts_per_tok
            ),
        ));
    }
    let ids = routed_experts.to_dtype(DType::I64)?;
    let values: Vec<i64> = ids.flatten_all()?.to_vec1()?;
    if let Some(bad) = values
        .iter()
        .find(|&&e| e < 0 || e >= moe.num_experts as i64)
    {
        return Err(Error::input(
            "routed_experts",
            format!("expert id {bad}: the model has {} experts", moe.num_experts),
        ));
    }
    let ids = ids.to_dtype(DType::U32)?;
    layers
        .iter()
        .enumerate()
        .map(|(ordinal, &layer)| Ok((layer, ids.narrow(1, ordinal, 1)?.squeeze(1)?.contiguous()?)))
        .collect()
}
