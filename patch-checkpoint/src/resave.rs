//! Load a checkpoint with all its conversions and save it back: what `patchwork resave` runs,
//! and a whole-engine round trip (load plan, conversions, strict accounting, reverse ops).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::{
    Checkpoint, ConversionRegistry, LoadReport, Result, SaveOptions, SaveReport, Weights,
    save_pretrained,
};

/// What [`resave`] did.
#[derive(Clone, Debug)]
pub struct ResaveReport {
    /// The registry key whose mapping was used (`Qwen2MoeForCausalLM` or `qwen2_moe`), if any.
    pub mapping: Option<String>,
    /// The load.
    pub load: LoadReport,
    /// The save.
    pub save: SaveReport,
}

/// Opens the checkpoint in `src`, requests every tensor its plan produces with the mapping
/// `registry` has for its config (every conversion runs, every key is accounted for), then
/// saves to `dst` through the reverse transforms. Each tensor is loaded in its stored dtype,
/// so the files written hold the same tensors, bit for bit. `options.progress` is told both
/// stages ([`crate::Stage::Load`], then [`crate::Stage::Save`]).
pub fn resave(
    src: &Path,
    dst: &Path,
    registry: &ConversionRegistry,
    options: &SaveOptions,
) -> Result<ResaveReport> {
    let ckpt = Checkpoint::open(src)?;
    let (mapping, transforms) = match registry.for_config(ckpt.config())? {
        Some((key, t)) => (Some(key), t),
        None => (None, Vec::new()),
    };
    let mut source = ckpt.source(transforms.clone())?;
    if let Some(p) = &options.progress {
        source = source.with_progress(p.clone());
    }
    let source = Arc::new(source);
    let weights = Weights::from_arc(source.clone(), DType::F32, &Device::Cpu);
    for t in source.planned_tensors() {
        weights.with_dtype(t.dtype).get(t.shape, &t.name)?;
    }
    weights.finish()?;
    let load = source.report();
    let save = save_pretrained(dst, ckpt.config(), &weights, &transforms, options)?;
    Ok(ResaveReport {
        mapping,
        load,
        save,
    })
}
