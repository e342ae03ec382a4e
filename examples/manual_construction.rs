//! The upstream page's manual-construction block, in Rust: `from_pretrained`/`from_config`
//! always build with the registered patches; a model built by hand uses the originals unless
//! built inside `apply_patches` (guard or closure), which holds on the current thread only.
//!
//! `cargo run --release --example manual_construction` (runs on the embedded llama-tiny; the
//! type built in each case is checked as it runs, and under `cargo test`).

use std::path::Path;
use std::sync::Arc;

use candle_core::DType;
use patch_core::checkpoint::{Checkpoint, Weights};
use patch_core::{
    Builder, ModuleExt, PatchSet, Replacement, apply_patches, register_patch_mapping,
};
use patchwork_examples::FusedQkvAttention;
use patchwork_models::llama::{LlamaAttention, LlamaConfig, LlamaDecoderLayer, LlamaForCausalLM};
use patchwork_models::{CausalLM, LoadOptions};

/// Prints the attention type of layer 0 of `model`, built `how`, and checks it is the fused
/// replacement when `patched`, the original `LlamaAttention` otherwise.
fn check_attention(
    how: &str,
    model: &CausalLM,
    patched: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let layer = model.model.layers[0]
        .downcast_ref::<LlamaDecoderLayer>()
        .ok_or("layer 0 is a LlamaDecoderLayer")?;
    let attn = &layer.self_attn;
    println!("{how:<32}{}", attn.type_name());
    let want = if patched {
        attn.is::<FusedQkvAttention>()
    } else {
        attn.is::<LlamaAttention>()
    };
    if !want {
        return Err(format!("{how}: built {}", attn.type_name()).into());
    }
    Ok(())
}

/// Builds a Llama by hand from the checkpoint's files: `LlamaModel(LlamaConfig())` upstream.
fn build_by_hand(dir: &Path) -> Result<CausalLM, Box<dyn std::error::Error>> {
    let ckpt = Checkpoint::open(dir)?;
    let config = LlamaConfig::from_json(ckpt.config(), "config.json")?;
    let source = Arc::new(ckpt.source(ckpt.registered_transforms()?)?);
    let weights = Weights::from_arc(source, DType::F32, &candle_core::Device::Cpu);
    let model = LlamaForCausalLM::build(&Builder::new(weights.clone()), &config)?;
    weights.finish()?;
    Ok(model)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llama-tiny");
    register_patch_mapping(
        [("LlamaAttention", Replacement::of::<FusedQkvAttention>())],
        false,
    )?;

    // Built by hand while the patches are applied: the patch applies.
    {
        let _patches = apply_patches();
        check_attention(
            "by hand, inside apply_patches:",
            &build_by_hand(&dir)?,
            true,
        )?;
    }
    // The closure form, for the registered patches or any other set.
    let model = PatchSet::global().run_with(|| build_by_hand(&dir))?;
    check_attention("by hand, inside set.run_with:", &model, true)?;

    // Built by hand with nothing applied: the original.
    check_attention("by hand, nothing applied:", &build_by_hand(&dir)?, false)?;

    // Applied on this thread only: a thread spawned meanwhile builds originals.
    let _patches = apply_patches();
    std::thread::scope(|s| {
        s.spawn(|| {
            build_by_hand(&dir)
                .and_then(|m| check_attention("by hand, another thread:", &m, false))
                .map_err(|e| e.to_string())
        })
        .join()
    })
    .map_err(|_| "the thread panicked")??;
    drop(_patches);

    // from_pretrained always applies the registered patches.
    let model = LlamaForCausalLM::from_pretrained(&dir, &LoadOptions::default())?;
    check_attention("from_pretrained:", &model, true)?;
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
