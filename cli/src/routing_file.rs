//! A routing file to replay (`--forced-experts FILE`, also spelled `--routed-experts`): this
//! tool's `selected_experts.L` per MoE layer `L` (`[B*T, K]`, what `forward` and `rollouts`
//! write), or vLLM's layout under vLLM's name, `routed_experts` (`[B*T, layers, K]` or `[B, T,
//! layers, K]`, the layer axis every layer or the MoE layers only). Any integer dtype; -1 =
//! route freely.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use patchwork_models::decoder::DecoderConfig;
use patchwork_models::routing::experts_from_vllm;

use crate::model_args::read_tensors;

/// The routing a file holds, read and checked for its names before a model is loaded.
pub enum RoutingFile {
    /// `selected_experts.L`, by layer `L`.
    PerLayer(BTreeMap<usize, Tensor>),
    /// vLLM's `routed_experts`, converted once the model's layers are known.
    Vllm(Tensor),
}

impl RoutingFile {
    /// Reads `path`; an error names the file and what it lacks or holds twice.
    pub fn read(path: &Path) -> Result<Self, Box<dyn std::error::Error>> {
        let name = path.display().to_string();
        let mut tensors = read_tensors(path)?;
        let mut per_layer = BTreeMap::new();
        for (key, t) in &tensors {
            let Some(layer) = key.strip_prefix("selected_experts.") else {
                continue;
            };
            let layer: usize = layer.parse().map_err(|_| {
                format!("{name}: tensor {key:?}: expected selected_experts.L with L a layer index")
            })?;
            per_layer.insert(layer, t.clone());
        }
        match (tensors.remove("routed_experts"), per_layer.is_empty()) {
            (None, false) => Ok(Self::PerLayer(per_layer)),
            (Some(routed), true) => Ok(Self::Vllm(routed)),
            (Some(_), false) => Err(format!(
                "{name}: holds both routed_experts and selected_experts.L: give one routing"
            )
            .into()),
            (None, true) => Err(format!(
                "{name}: no selected_experts.L tensor (what `patchwork forward` and `patchwork rollouts` write for MoE layer L) and no routed_experts (vLLM's [B*T, layers, top_k])"
            )
            .into()),
        }
    }

    /// The routing as `forced_experts` for `config`'s model (`path` names the file in errors).
    pub fn forced_experts(
        self,
        path: &Path,
        config: &DecoderConfig,
    ) -> Result<BTreeMap<usize, Tensor>, Box<dyn std::error::Error>> {
        let routed = match self {
            Self::PerLayer(map) => return Ok(map),
            Self::Vllm(t) => t,
        };
        let name = path.display();
        let routed = match *routed.dims() {
            [_, _, _] => routed,
            [b, t, layers, k] => {
                let tokens = b.checked_mul(t).ok_or_else(|| {
                    format!("{name}: routed_experts {:?} overflows", routed.dims())
                })?;
                routed.reshape((tokens, layers, k))?
            }
            _ => {
                return Err(format!(
                    "{name}: routed_experts has shape {:?}: expected [B*T, layers, top_k] or [B, T, layers, top_k]",
                    routed.dims()
                )
                .into());
            }
        };
        experts_from_vllm(&routed, config).map_err(|e| format!("{name}: {e}").into())
    }
}
