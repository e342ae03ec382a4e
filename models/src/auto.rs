//! `AutoModelForCausalLM`: load or create a model of any linked family, dispatching on the
//! config's `model_type`.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use patch_checkpoint::{Checkpoint, Progress, RandomInit, Weights};
use patch_core::{Builder, PatchSet};
use patchwork_hub::HubOptions;
use serde_json::Value;

use crate::causal_lm::{CausalLM, ModelExplain};
use crate::decoder::Quantization;
use crate::family::{ModelFamily, family, family_of};
use crate::{Error, Result};

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
    /// Convert a bf16 checkpoint's projection weights to the compute dtype at load. Default
    /// `false`: computing in float32 on CPU, they are kept in bf16 and widened exactly as the
    /// products read them, which gives the same results with half the memory and half the
    /// bytes per decoding step (PERFORMANCE.md has the measurements). Norms, biases and the
    /// embedding are always converted.
    pub upcast_weights: bool,
    /// Build every parameter as a trainable candle `Var` (in the compute dtype) and return
    /// them with the model ([`CausalLM::vars`]), for an optimiser. Default `false`: inference,
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
    /// Quantize the model at load: the attention and MLP sites are built through the
    /// quantized replacements ([`crate::replacements::quantized_patches`], added to the
    /// patches, so `explain` shows them) and the output head is quantized too. Inference
    /// only, on the CPU. `None` (the default): float weights.
    pub quantization: Option<Quantization>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            auto_dtype: false,
            device: Device::Cpu,
            seed: 0,
            patches: None,
            upcast_weights: false,
            trainable: false,
            attn_implementation: None,
            experts_implementation: None,
            max_positions: None,
            hub: HubOptions::default(),
            progress: None,
            quantization: None,
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

    /// These options quantizing the model in `format` at load (see
    /// [`LoadOptions::quantization`]).
    pub fn with_quantization(mut self, format: Quantization) -> Self {
        self.quantization = Some(format);
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

    /// Applies the options' implementation choices and position limit to a built model.
    fn select_implementations(&self, model: &mut CausalLM) -> Result<()> {
        if let Some(n) = self.max_positions {
            model.set_max_positions(n)?;
        }
        if let Some(name) = &self.attn_implementation {
            model.set_attn_implementation(name)?;
        }
        if let Some(name) = &self.experts_implementation {
            model.set_experts_implementation(name)?;
        }
        Ok(())
    }

    /// These options building every parameter as a trainable variable (see
    /// [`LoadOptions::trainable`]): the forward passes then record the autograd graph, and
    /// `loss.backward()` gives the gradients ([`CausalLM::gradients`]).
    pub fn trainable(mut self) -> Self {
        self.trainable = true;
        self
    }

    /// A root weights handle over `source` in `dtype` with these options' device and
    /// trainability.
    fn weights(&self, source: Arc<dyn patch_checkpoint::WeightSource>, dtype: DType) -> Weights {
        let weights = Weights::from_arc(source, dtype, &self.device);
        if self.trainable {
            weights.trainable()
        } else {
            weights
        }
    }

    /// The patches a build uses: the explicit set or the global registry, with the quantized
    /// replacements when quantizing.
    fn patch_set(&self) -> Result<PatchSet> {
        let set = self.patches.clone().unwrap_or_else(PatchSet::global);
        match self.quantization {
            Some(format) => {
                if self.trainable {
                    return Err(Error::input(
                        "quantization",
                        format!(
                            "{format}: quantized weights are for inference; load without trainable()"
                        ),
                    ));
                }
                crate::replacements::with_quantized_patches(&set, format)
            }
            None => Ok(set),
        }
    }

    /// Quantizes the output head when quantizing.
    fn quantize_head(&self, model: &mut CausalLM) -> Result<()> {
        if let Some(format) = self.quantization {
            model.lm_head.quantize(format).map_err(|e| {
                Error::input("quantization", format!("{format} at \"lm_head\": {e}"))
            })?;
        }
        Ok(())
    }
}

/// Loads a checkpoint folder, or a Hub id resolved to one, as `family`'s model (the
/// family-specific entry points use it).
pub(crate) fn load_pretrained(
    name: &Path,
    family: Option<&'static ModelFamily>,
    options: &LoadOptions,
) -> Result<CausalLM> {
    let dir = patchwork_hub::resolve_model(name, &options.hub)?;
    let _span = tracing::info_span!("load", model = %dir.display()).entered();
    let ckpt = Checkpoint::open(&dir)?;
    let source_name = dir.join("config.json").display().to_string();
    let found = family_of(ckpt.config(), &source_name)?;
    if let Some(expected) = family
        && expected.model_type != found.model_type
    {
        return Err(crate::Error::config(
            source_name,
            "model_type",
            format!(
                "{:?} is not {:?} ({})",
                found.model_type, expected.model_type, expected.architecture
            ),
        ));
    }
    let dtype = options.dtype_for(ckpt.config(), &source_name)?;
    let mut config = (found.parse_config)(ckpt.config(), &source_name)?;
    config.weight_dtype = kept_weight_dtype(&ckpt, options, dtype);
    crate::load_checks::check_against_checkpoint(&config, &ckpt, &source_name, dtype)?;
    let generation = dir.join("generation_config.json");
    let generation_defaults = if generation.exists() {
        crate::GenerationDefaults::from_file(&generation, config.vocab_size)?
    } else {
        crate::GenerationDefaults::default()
    };
    // The registry's transforms for this config (a family's link-time default, or what the
    // user registered over it); replacements add theirs through their scopes.
    let mut source = ckpt.source(ckpt.registered_transforms()?)?;
    if let Some(p) = &options.progress {
        source = source.with_progress(p.clone());
    }
    let source = Arc::new(source);
    let weights = options.weights(source.clone(), dtype);
    let b = Builder::new(weights.clone()).with_patches(options.patch_set()?);
    let mut model = {
        let _build = tracing::info_span!("build", model_type = found.model_type).entered();
        CausalLM::build(&b, config, found)?
    };
    weights.finish()?;
    options.select_implementations(&mut model)?;
    options.quantize_head(&mut model)?;
    model.set_generation_defaults(generation_defaults);
    let report = source.report();
    tracing::info!(
        tensors = report.tensors_served,
        bytes = report.bytes_read,
        seconds = report.elapsed.as_secs_f64(),
        "loaded"
    );
    model.set_load_report(report);
    Ok(model)
}

/// The dtype to keep projection weights in: bf16 when every floating matrix of the checkpoint
/// is stored in bf16, the model computes in float32 on CPU (the kernels widen bf16 as they
/// read), and the options do not ask to upcast; `None` (the compute dtype) otherwise.
fn kept_weight_dtype(ckpt: &Checkpoint, options: &LoadOptions, dtype: DType) -> Option<DType> {
    if options.upcast_weights
        || options.trainable
        || dtype != DType::F32
        || !options.device.is_cpu()
    {
        return None;
    }
    let tensors = ckpt.tensors();
    let mut matrices = tensors
        .iter()
        .filter(|(_, dtype, shape)| shape.len() >= 2 && dtype.is_none_or(|d| d.is_float()))
        .peekable();
    matrices.peek()?;
    matrices
        .all(|(_, dtype, _)| *dtype == Some(DType::BF16))
        .then_some(DType::BF16)
}

/// Creates `family`'s model with seeded random weights.
pub(crate) fn create_from_config(
    config: &Value,
    family: &'static ModelFamily,
    options: &LoadOptions,
) -> Result<CausalLM> {
    let dtype = options.dtype_for(config, "config")?;
    let config = (family.parse_config)(config, "config")?;
    crate::load_checks::check_from_config(&config, dtype)?;
    let weights = options.weights(
        Arc::new(RandomInit::new(options.seed, config.initializer_range)),
        dtype,
    );
    let b = Builder::new(weights).with_patches(options.patch_set()?);
    let mut model = CausalLM::build(&b, config, family)?;
    options.select_implementations(&mut model)?;
    options.quantize_head(&mut model)?;
    Ok(model)
}

/// Loads or creates a causal LM of whichever linked family the config names (transformers'
/// `AutoModelForCausalLM`). Both entry points build with the registered patches.
#[derive(Clone, Copy, Debug)]
pub struct AutoModelForCausalLM;

impl AutoModelForCausalLM {
    /// Loads the checkpoint folder `dir` (`config.json` plus `model.safetensors` or a sharded
    /// checkpoint), or the Hub id `dir` names when no such folder exists (from the Hub cache,
    /// downloading when online: [`LoadOptions::hub`]): picks the family from `model_type`, converts the weights with the family's
    /// transforms (and those carried by replacements), and checks that every checkpoint tensor
    /// was used and every requested one found.
    ///
    /// ```no_run
    /// use patchwork_models::{AutoModelForCausalLM, LoadOptions};
    /// let model = AutoModelForCausalLM::from_pretrained("fixtures/llama-tiny", &LoadOptions::default())?;
    /// println!("{}", model.explain());
    /// # Ok::<(), patchwork_models::Error>(())
    /// ```
    pub fn from_pretrained(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<CausalLM> {
        load_pretrained(dir.as_ref(), None, options)
    }

    /// Creates a model with seeded random weights (`options.seed`) from a config JSON as
    /// published.
    ///
    /// ```
    /// use patchwork_models::{AutoModelForCausalLM, LoadOptions};
    /// let config = serde_json::json!({
    ///     "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
    ///     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    /// });
    /// let model = AutoModelForCausalLM::from_config(&config, &LoadOptions::default().with_seed(7))?;
    /// assert_eq!(model.model.layers.len(), 1);
    /// # Ok::<(), patchwork_models::Error>(())
    /// ```
    pub fn from_config(config: &Value, options: &LoadOptions) -> Result<CausalLM> {
        create_from_config(config, family_of(config, "config")?, options)
    }

    /// How the sites of `model_type`'s family resolve against the global registry now,
    /// without building anything.
    pub fn explain(model_type: &str) -> Result<ModelExplain> {
        let family = family(model_type, "explain")?;
        Ok(ModelExplain {
            model_type: family.model_type,
            architecture: family.architecture,
            explain: PatchSet::global().explain(family.sites),
            report: None,
            implementations: None,
        })
    }
}
