//! The upstream page's manual-construction block, in Rust: `from_pretrained`/`from_config`
//! always build with the registered patches; a model built by hand uses the originals unless
//! built inside `apply_patches` (guard or closure), which holds on the current thread only.
//!
//! `cargo run --release --example manual_construction` (runs on the embedded llama-tiny).

use std::path::Path;
use std::sync::Arc;

use candle_core::DType;
use patch_core::checkpoint::{Checkpoint, Weights};
use patch_core::{
    Builder, ModuleExt, PatchSet, Replacement, apply_patches, register_patch_mapping,
};
use patchwork_examples::FusedQkvAttention;
use patchwork_models::llama::{LlamaConfig, LlamaDecoderLayer, LlamaForCausalLM};
use patchwork_models::{CausalLM, LoadOptions};

/// The attention type of layer 0.
fn attention_type(model: &CausalLM) -> &'static str {
    match model.model.layers[0].downcast_ref::<LlamaDecoderLayer>() {
        Some(layer) => layer.self_attn.type_name(),
        None => "(layer 0 is not a LlamaDecoderLayer)",
    }
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
        println!(
            "by hand, inside apply_patches:  {}",
            attention_type(&build_by_hand(&dir)?)
        );
    }
    // The closure form, for the registered patches or any other set.
    let model = PatchSet::global().run_with(|| build_by_hand(&dir))?;
    println!("by hand, inside set.run_with:   {}", attention_type(&model));

    // Built by hand with nothing applied: the original.
    println!(
        "by hand, nothing applied:       {}",
        attention_type(&build_by_hand(&dir)?)
    );

    // Applied on this thread only: a thread spawned meanwhile builds originals.
    let _patches = apply_patches();
    let other = std::thread::scope(|s| {
        s.spawn(|| {
            build_by_hand(&dir)
                .map(|m| attention_type(&m))
                .map_err(|e| e.to_string())
        })
        .join()
    })
    .map_err(|_| "the thread panicked")??;
    println!("by hand, another thread:        {other}");
    drop(_patches);

    // from_pretrained always applies the registered patches.
    let model = LlamaForCausalLM::from_pretrained(&dir, &LoadOptions::default())?;
    println!("from_pretrained:                {}", attention_type(&model));
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
