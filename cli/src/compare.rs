//! `patchwork compare DIR [--patch-set NAME] [--inputs IN.safetensors] [--tolerance T]`: does a
//! replacement compute the same thing as the original?
//!
//! Loads the checkpoint twice, with the named patch set (default `fused-qkv`; a quantization
//! format name, `q8_0` or `q4_k`, quantizes every projection and expert bank) and without
//! patches, runs both on the same tokens with every site recorded, and prints, per module path,
//! the largest difference of the site's output, then the logits' difference and the first
//! divergence above the tolerance (relative to each output's scale) as its last line. Exit
//! status 1 when a site diverges, so scripts can check a replacement.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use patch_core::PatchSet;
use patchwork_models::LoadOptions;
use patchwork_models::compare::compare_models;
use patchwork_models::replacements::{PATCH_SETS, patch_set};
use patchwork_quant::{Format, Topology};

use crate::CliResult;
use crate::model_args::{ModelArgs, read_tensors};

/// Arguments of `compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The replacements to check: `fused-qkv`, or a quantization format (`q8_0`, `q4_k`, ...:
    /// every projection and expert bank in it, with llama.cpp's fallbacks).
    #[arg(long, default_value = "fused-qkv")]
    patch_set: String,
    /// Safetensors file with `input_ids` (and optionally `attention_mask`); default: 16
    /// deterministic tokens.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Largest difference allowed, relative to `max(1, max |original output|)`.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f32,
}

/// Runs `compare`.
pub fn run(args: Args) -> CliResult {
    let patches = match Format::from_name(&args.patch_set) {
        Some(format) => Topology::new(Some(format))
            .patches()
            .map_err(|e| format!("--patch-set: {e}"))?,
        None => patch_set(&args.patch_set).map_err(|e| {
            format!(
                "--patch-set: {e} (known: {}, or a quantization format: q8_0, q4_k, ...)",
                PATCH_SETS.join(", ")
            )
        })?,
    };
    let original = args.model.load(|o| LoadOptions {
        added_patches: Vec::new(),
        ..o.with_patches(PatchSet::empty())
    })?;
    let patched = args.model.load(|o| o.with_patches(patches))?;
    let (ids, mask) = match &args.inputs {
        Some(path) => {
            let name = path.display().to_string();
            let mut t = read_tensors(path)?;
            let ids = t
                .remove("input_ids")
                .ok_or_else(|| format!("{name}: no tensor named input_ids"))?;
            (ids, t.remove("attention_mask"))
        }
        None => {
            let vocab = original.config().vocab_size;
            let ids: Vec<u32> = (0..16).map(|i| ((i * 7919 + 13) % vocab) as u32).collect();
            (Tensor::from_vec(ids, (1, 16), &Device::Cpu)?, None)
        }
    };
    let comparison = compare_models(&patched, &original, &ids, mask.as_ref(), args.tolerance)?;
    println!("{comparison}");
    match comparison.first_divergence() {
        Some(d) => Err(format!(
            "patch set {:?} diverges from the original at {} ({})",
            args.patch_set, d.path, d.site
        )
        .into()),
        None => Ok(()),
    }
}
