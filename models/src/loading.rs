//! Loading a model: a checkpoint folder (safetensors), a GGUF file, or a Hub id resolved to
//! a folder; or creating one with seeded random weights from a config.

use std::path::Path;
use std::sync::Arc;

use candle_core::DType;
use patch_checkpoint::{Checkpoint, RandomInit};
use patch_core::{Builder, PatchSet};
use serde_json::Value;

use crate::causal_lm::CausalLM;
use crate::family::{ModelFamily, family_of};
use crate::load_options::LoadOptions;
use crate::{Error, Result};

/// Loads a checkpoint folder, a GGUF file (or a folder holding one, see [`gguf_path`]), or a
/// Hub id resolved to a folder, as `family`'s model (the family-specific entry points use it).
pub(crate) fn load_pretrained(
    name: &Path,
    family: Option<&'static ModelFamily>,
    options: &LoadOptions,
) -> Result<CausalLM> {
    let location = model_location(name, options)?;
    if location.is_file() {
        return load_gguf(&location, family, options);
    }
    let dir = location;
    let _span = tracing::info_span!("load", model = %dir.display()).entered();
    let ckpt = Checkpoint::open(&dir)?;
    let source_name = dir.join("config.json").display().to_string();
    let found = family_of(ckpt.config(), &source_name)?;
    expect_family(family, found, &source_name)?;
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

/// Where the model `name` is: a GGUF file (`name` itself, or the one its folder holds, see
/// [`LoadOptions::gguf_file`]), else the checkpoint folder (`name`, or the Hub id resolved to
/// a folder in the cache): what `from_pretrained` loads, and where a tool finds the model's
/// files (its tokenizer, the files it must not overwrite).
pub fn model_location(name: &Path, options: &LoadOptions) -> Result<std::path::PathBuf> {
    if name.is_file() {
        return Ok(name.to_path_buf());
    }
    let dir = patchwork_hub::resolve_model(name, &options.hub)?;
    Ok(gguf_path(&dir, options)?.unwrap_or(dir))
}

/// The GGUF file of the folder `dir`: the one `LoadOptions::gguf_file` names, else its only
/// `.gguf` file when it has no `config.json` (a folder of safetensors with a GGUF beside them
/// loads the safetensors unless the GGUF is named).
fn gguf_path(dir: &Path, options: &LoadOptions) -> Result<Option<std::path::PathBuf>> {
    match &options.gguf_file {
        Some(name) => Ok(patchwork_gguf::find(dir, Some(name))?),
        None if !dir.join("config.json").exists() => Ok(patchwork_gguf::find(dir, None)?),
        None => Ok(None),
    }
}

/// An error unless `found` is the family the caller expects.
fn expect_family(
    expected: Option<&'static ModelFamily>,
    found: &'static ModelFamily,
    source_name: &str,
) -> Result<()> {
    match expected {
        Some(e) if e.model_type != found.model_type => Err(Error::config(
            source_name,
            "model_type",
            format!(
                "{:?} is not {:?} ({})",
                found.model_type, e.model_type, e.architecture
            ),
        )),
        _ => Ok(()),
    }
}

/// Patches that compute on quantized blocks as a file stores them, added to every load of a
/// GGUF file (so a quantized tensor stays packed): what a crate of quantized modules registers
/// with [`register_packed_patches!`](crate::register_packed_patches) (`patchwork-quant`
/// does). Without one linked, a GGUF file's quantized tensors are dequantized at load.
pub struct PackedPatches(pub fn() -> PatchSet);

inventory::collect!(PackedPatches);

/// Registers a `fn() -> PatchSet` at link time as [`PackedPatches`].
#[macro_export]
macro_rules! register_packed_patches {
    ($patches:path) => {
        $crate::__private::inventory::submit! { $crate::PackedPatches($patches) }
    };
}

/// Loads the GGUF file `path` (see the `patchwork-gguf` crate): the config from its metadata,
/// its tensors by transformers' names. Quantized blocks stay packed where a linked crate of
/// patches computes on them (`patchwork-quant`); otherwise they are dequantized, and the load
/// says so in the log.
fn load_gguf(
    path: &Path,
    family: Option<&'static ModelFamily>,
    options: &LoadOptions,
) -> Result<CausalLM> {
    let _span = tracing::info_span!("load", gguf = %path.display()).entered();
    let ckpt = patchwork_gguf::GgufCheckpoint::open(path)?;
    let source_name = path.display().to_string();
    let found = family_of(ckpt.config(), &source_name)?;
    expect_family(family, found, &source_name)?;
    let dtype = options.dtype_for(ckpt.config(), &source_name)?;
    let config = (found.parse_config)(ckpt.config(), &source_name)?;
    crate::load_checks::check_from_config(&config, dtype)?;
    let source = Arc::new(ckpt.source()?);
    let weights = options.weights(source.clone(), dtype);
    let patches = inventory::iter::<PackedPatches>
        .into_iter()
        .filter(|_| options.packed)
        .fold(options.patch_set(), |set, p| set.merged(&(p.0)()));
    let b = Builder::new(weights.clone()).with_patches(patches);
    let mut model = {
        let _build = tracing::info_span!("build", model_type = found.model_type).entered();
        CausalLM::build(&b, config, found)?
    };
    weights.finish()?;
    select_implementations(options, &mut model)?;
    let packed = ckpt
        .file()
        .tensors()
        .values()
        .any(|t| !matches!(t.dtype, candle_core::quantized::GgmlDType::F32));
    let kept = model
        .weights()
        .params()
        .entries()
        .iter()
        .any(|(n, _)| model.weights().params().is_deferred(n));
    if packed && !kept && options.packed {
        tracing::warn!(
            file = %path.display(),
            "the GGUF file's quantized tensors were dequantized to floats: link patchwork-quant (`use patchwork_quant as _;`) to compute on them packed"
        );
    }
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
