//! Recorded MoE routing, ready to replay: the expert ids each MoE layer chose, keyed by
//! absolute layer index as [`ForwardOptions::forced_experts`](crate::ForwardOptions) takes them.
//!
//! Replaying keeps the recorded experts and recomputes their scores with the router's current
//! weights (Megatron-style replay, as the upstream page's replayable router does), so gradients
//! would flow through the active parameters while the expert choice stays fixed. The forced ids
//! reach the router through the forward context, never through instance state, so a model can
//! serve recorded and free passes from several threads at once.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::decoder::{DecoderConfig, FeedForwardKind, Record, Records, RouterRecord};
use crate::{Error, Result};

/// The selected experts of a recorded pass (`output_router_logits`), by absolute layer index:
/// what `forced_experts` replays.
pub fn recorded_experts(records: &[RouterRecord]) -> BTreeMap<usize, Tensor> {
    records
        .iter()
        .map(|r| (r.layer, r.router.indices.clone()))
        .collect()
}

/// The selected experts of every router recorded in `records` (a pass with
/// [`Recorders`](crate::decoder::Recorders) on the routers: transformers'
/// `output_selected_experts`), by the absolute layer index of the `layers.N` segment of the
/// router's module path: what `forced_experts` replays. An error names a router recorded
/// outside a numbered layer.
pub fn experts_from_records(records: &Records) -> Result<BTreeMap<usize, Tensor>> {
    let mut out = BTreeMap::new();
    for r in records.iter() {
        let Record::Router(router) = &r.record else {
            continue;
        };
        let layer = r
            .path
            .split('.')
            .collect::<Vec<_>>()
            .windows(2)
            .find(|w| w[0] == "layers")
            .and_then(|w| w[1].parse::<usize>().ok())
            .ok_or_else(|| {
                Error::input(
                    "records",
                    format!(
                        "router {} ({}) is not under a numbered layer (`layers.N`)",
                        r.path, r.site
                    ),
                )
            })?;
        out.entry(layer).or_insert_with(|| router.indices.clone());
    }
    Ok(out)
}

/// The absolute indices of the MoE layers of `config`, in order.
pub fn moe_layers(config: &DecoderConfig) -> Vec<usize> {
    (0..config.num_hidden_layers)
        .filter(|&i| config.feed_forward_kind(i) == FeedForwardKind::Sparse)
        .collect()
}

/// Converts vLLM's `routed_experts` (`CompletionOutput.routed_experts` with
/// `enable_return_routed_experts=True`: ids `[seq_len, layers, top_k]`, any integer dtype)
/// into per-layer expert ids for `forced_experts`, keyed by absolute layer index.
///
/// The layer axis may count the MoE layers only (in order), or every decoder layer (the dense
/// layers' entries are then ignored). An id of -1 (a token that was never routed, such as the
/// last one of a generation) lets that token route freely on replay.
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
    let axis: Vec<(usize, usize)> = if n_layers == layers.len() {
        layers.iter().copied().enumerate().collect()
    } else if n_layers == config.num_hidden_layers {
        layers.iter().map(|&l| (l, l)).collect()
    } else {
        return Err(Error::input(
            "routed_experts",
            format!(
                "shape [{seq}, {n_layers}, {k}]: the layer axis must count the {} MoE layers or all {} layers",
                layers.len(),
                config.num_hidden_layers
            ),
        ));
    };
    if k != moe.num_experts_per_tok {
        return Err(Error::input(
            "routed_experts",
            format!(
                "shape [{seq}, {n_layers}, {k}]: this model chooses {} experts per token",
                moe.num_experts_per_tok
            ),
        ));
    }
    let values = crate::loss::integer_values("routed_experts", routed_experts)?;
    if let Some((i, bad)) = values
        .iter()
        .enumerate()
        .find(|&(_, &e)| e < -1 || e >= moe.num_experts as i64)
    {
        return Err(Error::input(
            "routed_experts",
            format!(
                "expert id {bad} at [{}, {}, {}]: expected -1 or an expert below {}",
                i / (n_layers * k),
                (i / k) % n_layers,
                i % k,
                moe.num_experts
            ),
        ));
    }
    let ids = Tensor::from_vec(values, (seq, n_layers, k), routed_experts.device())?;
    axis.into_iter()
        .map(|(ordinal, layer)| Ok((layer, ids.narrow(1, ordinal, 1)?.squeeze(1)?.contiguous()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::AutoModelForCausalLM;

    fn config() -> DecoderConfig {
        let json = serde_json::json!({
            "model_type": "qwen2_moe", "vocab_size": 32, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
            "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
            "moe_intermediate_size": 8, "shared_expert_intermediate_size": 0,
            "mlp_only_layers": [1],
        });
        let model =
            AutoModelForCausalLM::from_config(&json, &crate::LoadOptions::default()).unwrap();
        model.config().clone()
    }

    #[test]
    fn vllm_routing_with_moe_only_or_all_layer_axes() {
        let c = config();
        assert_eq!(moe_layers(&c), [0, 2]);
        let moe_only =
            Tensor::new(&[[[0i64, 1], [2, 3]], [[-1, -1], [3, 0]]], &Device::Cpu).unwrap();
        let forced = experts_from_vllm(&moe_only, &c).unwrap();
        assert_eq!(forced.keys().copied().collect::<Vec<_>>(), [0, 2]);
        assert_eq!(forced[&0].to_vec2::<i64>().unwrap(), [[0, 1], [-1, -1]]);
        assert_eq!(forced[&2].to_vec2::<i64>().unwrap(), [[2, 3], [3, 0]]);
        // Every layer on the axis: the dense layer 1's entries are ignored.
        let all = Tensor::new(
            &[[[0i64, 1], [9, 9], [2, 3]], [[-1, -1], [0, 0], [3, 0]]],
            &Device::Cpu,
        )
        .unwrap();
        let err = experts_from_vllm(&all, &c).unwrap_err().to_string();
        assert!(err.contains("expert id 9 at [0, 1, 0]"), "{err}");
        let all = all.clamp(-1i64, 3i64).unwrap();
        let forced = experts_from_vllm(&all, &c).unwrap();
        assert_eq!(forced[&2].to_vec2::<i64>().unwrap(), [[2, 3], [3, 0]]);
        let wrong = Tensor::zeros((2, 2, 3), DType::I64, &Device::Cpu).unwrap();
        let err = experts_from_vllm(&wrong, &c).unwrap_err().to_string();
        assert!(err.contains("chooses 2 experts per token"), "{err}");
        let wrong = Tensor::zeros((2, 4, 2), DType::I64, &Device::Cpu).unwrap();
        let err = experts_from_vllm(&wrong, &c).unwrap_err().to_string();
        assert!(err.contains("2 MoE layers or all 3 layers"), "{err}");
    }
}
