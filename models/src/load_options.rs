//! `LoadOptions`: how to load or create a model (dtype, device, patches, implementations,
//! trainability, quantization, the Hub).

use std::sync::Arc;

use candle_core::{DType, Device};
use patch_checkpoint::{Progress, Weights};
use patch_core::PatchSet;
use patchwork_hub::HubOptions;
use serde_json::Value;

use crate::Result;

/// How to load or create a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Compute dtype; weights stored in another dtype are converted once at load. Default
    /// float32 (the fast and exact choice on CPU).
    pub dtype: DType,
    /// Take the compute dtype from the config's `torch_dtype` (or `dtype`) instead of
    /// [`LoadOptions::dtype`] (transformers' `torch_dtype="auto"`); float32 when it names
    /// none. Default `false`.
    pub auto_dtype: bool,
    /// Device. Default CPU.
    pub device: Device,
    /// Seed of `from_config`'s random weights.
    pub seed: u64,
    /// The patches to build with; `None` (the default) takes the global registry as it is
    /// when loading starts (transformers' behaviour: `from_pretrained` always applies the
    /// registered patches).
    pub patches: Option<PatchSet>,
    /// The GGUF file to load from a folder holding several, or holding safetensors too
    /// (transformers' `gguf_file`); `None` (the default) loads a folder's safetensors, or its
    /// one `.gguf` file when it has no `config.json`. A path to a `.gguf` file needs none.
    pub gguf_file: Option<String>,
    /// Compute on a GGUF file's quantized blocks as stored (`true`, the default): the linked
    /// crates' [`PackedPatches`](crate::PackedPatches) are added to the load. `false`
    /// dequantizes every tensor to floats at load.
    pub packed: bool,
    /// Patch sets added on top of [`LoadOptions::patches`] (or the global registry), in order:
    /// how replacements that ship as crates of their own come into a load (a quantization
    /// topology, adapters, a parallel plan). Empty by default.
    pub added_patches: Vec<PatchSet>,
    /// Convert a bf16 checkpoint's projection weights to the compute dtype at load. Default
    /// `false`: computing in float32 on CPU, they are kept in bf16 and widened exactly as the
    /// products read them, which gives the same results with half the memory and half the
    /// bytes per decoding step (PERFORMANCE.md has the measurements). Norms, biases and the
    /// embedding are always converted.
    pub upcast_weights: bool,
    /// Build every parameter as a trainable candle `Var` (in the compute dtype) and return
    /// them with the model ([`CausalLM::vars`](crate::CausalLM::vars)), for an optimiser. Default `false`: inference,
    /// with memory-mapped checkpoints and bf16 weights kept.
    pub trainable: bool,
    /// The attention implementation (`"sdpa"`, `"eager"`, or a registered name; see
    /// [`crate::implementations`]); `None` takes the config's `attn_implementation`, else
    /// `"sdpa"`.
    pub attn_implementation: Option<String>,
    /// The routed-experts implementation (`"grouped_mm"`, `"eager"`, or a registered name);
    /// `None` takes the config's `experts_implementation`, else `"grouped_mm"`.
    pub experts_implementation: Option<String>,
    /// How many positions a pass or a generation may reach; `None` (the default) takes the
    /// config's `max_position_embeddings`. Raising it runs the rotary embedding past the
    /// context the model was trained for (extrapolation), which is then the caller's choice.
    pub max_positions: Option<usize>,
    /// How a Hub id is found: revision, cache folder, offline ([`patchwork_hub`]); a folder
    /// path needs none of it.
    pub hub: HubOptions,
    /// Told the bytes of weights read so far while loading.
    pub progress: Option<Progress>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            auto_dtype: false,
            device: Device::Cpu,
            seed: 0,
            patches: None,
            gguf_file: None,
            packed: true,
            added_patches: Vec::new(),
            upcast_weights: false,
            trainable: false,
            attn_implementation: None,
            experts_implementation: None,
            max_positions: None,
            hub: HubOptions::default(),
            progress: None,
        }
    }
}

impl LoadOptions {
    /// These options with compute dtype `dtype`.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// These options taking the compute dtype from the config (see
    /// [`LoadOptions::auto_dtype`]).
    pub fn with_auto_dtype(mut self) -> Self {
        self.auto_dtype = true;
        self
    }

    /// These options loading a Hub id at `revision` (a branch, tag or commit hash).
    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.hub.revision = revision.into();
        self
    }

    /// These options telling `progress` how far loading the weights is.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The compute dtype for `config`: [`LoadOptions::dtype`], or the config's when
    /// [`LoadOptions::auto_dtype`] asks for it.
    pub fn dtype_for(&self, config: &Value, source_name: &str) -> Result<DType> {
        if !self.auto_dtype {
            return Ok(self.dtype);
        }
        for key in ["torch_dtype", "dtype"] {
            match config.get(key) {
                None | Some(Value::Null) => continue,
                Some(Value::String(name)) => {
                    return match name.trim_start_matches("torch.") {
                        "float32" | "float" => Ok(DType::F32),
                        "bfloat16" => Ok(DType::BF16),
                        "float16" | "half" => Ok(DType::F16),
                        "float64" | "double" => Ok(DType::F64),
                        other => Err(crate::Error::config(
                            source_name,
                            key,
                            format!(
                                "{other:?} is not a float dtype (float32, bfloat16, float16, float64)"
                            ),
                        )),
                    };
                }
                Some(other) => {
                    return Err(crate::Error::config(
                        source_name,
                        key,
                        format!("expected a dtype name, found {other}"),
                    ));
                }
            }
        }
        Ok(DType::F32)
    }

    /// These options on `device`.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// These options with random-weight seed `seed`.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// These options building with exactly `patches` instead of the global registry.
    pub fn with_patches(mut self, patches: PatchSet) -> Self {
        self.patches = Some(patches);
        self
    }

    /// These options loading the GGUF file `name` of a model folder (see
    /// [`LoadOptions::gguf_file`]).
    pub fn with_gguf_file(mut self, name: impl Into<String>) -> Self {
        self.gguf_file = Some(name.into());
        self
    }

    /// These options computing on a GGUF file's quantized blocks (`true`, the default) or
    /// dequantizing them at load (`false`); see [`LoadOptions::packed`].
    pub fn with_packed(mut self, packed: bool) -> Self {
        self.packed = packed;
        self
    }

    /// These options adding `patches` to the set the load builds with (the registry, or
    /// [`LoadOptions::with_patches`]'s): the matching rules then decide between them and the
    /// rest as between any patches.
    pub fn with_added_patches(mut self, patches: PatchSet) -> Self {
        self.added_patches.push(patches);
        self
    }

    /// These options converting bf16 projection weights at load (`true`) or keeping them
    /// (`false`, the default); see [`LoadOptions::upcast_weights`].
    pub fn with_upcast_weights(mut self, upcast: bool) -> Self {
        self.upcast_weights = upcast;
        self
    }

    /// These options computing attention with the implementation named `name`.
    pub fn with_attn_implementation(mut self, name: impl Into<String>) -> Self {
        self.attn_implementation = Some(name.into());
        self
    }

    /// These options computing routed experts with the implementation named `name`.
    pub fn with_experts_implementation(mut self, name: impl Into<String>) -> Self {
        self.experts_implementation = Some(name.into());
        self
    }

    /// These options allowing passes and generations to reach `positions` positions (see
    /// [`LoadOptions::max_positions`]).
    pub fn with_max_positions(mut self, positions: usize) -> Self {
        self.max_positions = Some(positions);
        self
    }

    /// These options building every parameter as a trainable variable (see
    /// [`LoadOptions::trainable`]): the forward passes then record the autograd graph, and
    /// `loss.backward()` gives the gradients ([`CausalLM::gradients`](crate::CausalLM::gradients)).
    pub fn trainable(mut self) -> Self {
        self.trainable = true;
        self
    }

    /// A root weights handle over `source` in `dtype` with these options' device and
    /// trainability.
    pub(crate) fn weights(
        &self,
        source: Arc<dyn patch_checkpoint::WeightSource>,
        dtype: DType,
    ) -> Weights {
        let weights = Weights::from_arc(source, dtype, &self.device);
        if self.trainable {
            weights.trainable()
        } else {
            weights
        }
    }

    /// The patches a build uses: the explicit set or the global registry, then the added
    /// sets ([`LoadOptions::with_added_patches`]).
    pub(crate) fn patch_set(&self) -> PatchSet {
        let base = self.patches.clone().unwrap_or_else(PatchSet::global);
        self.added_patches
            .iter()
            .fold(base, |set, more| set.merged(more))
    }
}
