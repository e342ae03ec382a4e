//! `AutoModelForCausalLM`: load or create a model of any linked family, dispatching on the
//! config's `model_type`; and each family's entry points ([`ForCausalLM`], declared in
//! `for_causal_lm.rs`, a module that depends on nothing, so that `family` can keep a deprecated
//! alias to it without importing this module).

use std::path::Path;
use std::sync::Arc;

use candle_core::DType;
use patch_checkpoint::{Checkpoint, RandomInit};
use patch_core::{Builder, PatchSet};
use serde_json::Value;

use crate::Result;
use crate::causal_lm::CausalLM;
use crate::decoder::FamilyConfig;
use crate::explain::ModelExplain;
use crate::family::{Family, ModelFamily, family, family_of};
use crate::for_causal_lm::ForCausalLM;
use crate::load_options::LoadOptions;

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
    let b = Builder::new(weights.clone()).with_patches(options.patch_set());
    let mut model = {
        let _build = tracing::info_span!("build", model_type = found.model_type).entered();
        CausalLM::build(&b, config, found)?
    };
    weights.finish()?;
    select_implementations(options, &mut model)?;
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
    let b = Builder::new(weights).with_patches(options.patch_set());
    let mut model = CausalLM::build(&b, config, family)?;
    select_implementations(options, &mut model)?;
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
            explain: PatchSet::global().explain(family.all_sites()),
            report: None,
            implementations: None,
        })
    }
}

impl<M: Family> ForCausalLM<M> {
    /// Loads a checkpoint folder of this family with the registered patches (an error if its
    /// `model_type` is another family's).
    pub fn from_pretrained(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<CausalLM> {
        load_pretrained(dir.as_ref(), Some(M::family()), options)
    }

    /// A seeded random model for `config`, with the registered patches.
    pub fn from_config(config: &M::Config, options: &LoadOptions) -> Result<CausalLM> {
        create_from_config(&config.to_json(), M::family(), options)
    }

    /// Builds a model with `b` by hand: patches as `b` resolves them, so the originals unless
    /// built inside [`patch_core::apply_patches`] or with [`Builder::with_patches`]
    /// (transformers' `LlamaForCausalLM(config)`).
    pub fn build(b: &Builder, config: &M::Config) -> Result<CausalLM> {
        let json = Arc::new(config.to_json());
        CausalLM::build(b, config.decoder_config(json, "config")?, M::family())
    }
}

/// Applies the options' implementation choices and position limit to a built model.
fn select_implementations(options: &LoadOptions, model: &mut CausalLM) -> Result<()> {
    if let Some(n) = options.max_positions {
        model.set_max_positions(n)?;
    }
    if let Some(name) = &options.attn_implementation {
        model.set_attn_implementation(name)?;
    }
    if let Some(name) = &options.experts_implementation {
        model.set_experts_implementation(name)?;
    }
    Ok(())
}
