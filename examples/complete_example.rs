//! The upstream page's complete example, in Rust: restructure a Qwen2-MoE's experts (one MLP
//! per expert, for a quantizer that only understands per-expert linears) and its attention
//! (one fused q/k/v projection with biases), load the Hub checkpoint into that layout, check
//! the patched model computes what the default one does (and what transformers computed on
//! the original files), and save it back to the original layout, every tensor identical.
//!
//! `cargo run --release --example complete_example` (runs on the embedded
//! `fixtures/qwen2-moe-tiny`; every claim above is checked as it runs, and under `cargo test`).

use std::path::Path;

use candle_core::{Device, Tensor};
use patch_core::checkpoint::{SaveOptions, register_checkpoint_conversion_mapping};
use patch_core::{ModuleExt, PatchSet, Replacement, register_patch_mapping};
use patchwork_examples::{FusedQkvAttention, ModuleListExperts, same_checkpoint_tensors};
use patchwork_models::decoder::FeedForward;
use patchwork_models::qwen2_moe::{Qwen2MoeDecoderLayer, Qwen2MoeSparseMoeBlock};
use patchwork_models::{AutoModelForCausalLM, LoadOptions};
use patchwork_testing::{LOGITS, check_close};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2-moe-tiny");
    let input = Tensor::new(
        &[
            [66u32, 221, 47, 234, 117, 102, 13, 226],
            [5, 6, 7, 8, 9, 10, 11, 12],
        ],
        &Device::Cpu,
    )?;

    // The default model, for comparison: stacked experts, separate q/k/v.
    let default = AutoModelForCausalLM::from_pretrained(
        &dir,
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )?;
    let expected = default.forward(&input, None)?;

    // Register the patches for the new experts and attention modules.
    register_patch_mapping(
        [
            ("Qwen2MoeExperts", Replacement::of::<ModuleListExperts>()),
            ("Qwen2MoeAttention", Replacement::of::<FusedQkvAttention>()),
        ],
        false,
    )?;
    // Upstream overrides the default qwen2_moe conversion mapping here. In patchwork it is not
    // needed (the ModuleList experts ask for the per-expert keys by their own names, and those
    // are served as stored; the stacking only runs when its target is asked for), nor is the
    // q/k/v fusion (the fused attention carries it): the override is kept to mirror the page,
    // and changes nothing. Without `overwrite` the family's default is in the way, as upstream.
    let err = register_checkpoint_conversion_mapping("qwen2_moe", Vec::new(), false)
        .err()
        .ok_or("registering over the default without overwrite succeeded")?;
    println!("without overwrite: {err}\n");
    if !err.to_string().contains("overwrite = true") {
        return Err(format!("the error does not say how to overwrite: {err}").into());
    }
    register_checkpoint_conversion_mapping("qwen2_moe", Vec::new(), true)?;

    let model = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default())?;
    println!("{}", model.explain());
    // What was built: every attention fused, every sparse layer's experts a list of MLPs.
    let layer = model.model.layers[0]
        .downcast_ref::<Qwen2MoeDecoderLayer>()
        .ok_or("layer 0 is a Qwen2MoeDecoderLayer")?;
    let FeedForward::Sparse(block) = &layer.mlp else {
        return Err("layer 0 is sparse".into());
    };
    let block = block
        .downcast_ref::<Qwen2MoeSparseMoeBlock>()
        .ok_or("layer 0's MLP is a Qwen2MoeSparseMoeBlock")?;
    let patched = model.report().patched();
    println!(
        "{patched} sites patched; layer 0: {} and {}",
        layer.self_attn.type_name(),
        block.experts.type_name()
    );
    // 3 attentions and the 2 sparse layers' expert lists.
    if !layer.self_attn.is::<FusedQkvAttention>()
        || !block.experts.is::<ModuleListExperts>()
        || patched != 5
    {
        return Err("the patches were not applied where expected".into());
    }

    // The same logits as the default model, and as transformers on the original files.
    let logits = model.forward(&input, None)?;
    let d = check_close("patched vs default logits", &logits, &expected, LOGITS)?;
    println!(
        "patched vs default logits: max |diff| = {:e}",
        d.max_abs_diff
    );
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    let (ids, want) = (&reference["input_ids"], &reference["logits"]);
    let d = check_close(
        "patched vs transformers",
        &model.forward(ids, None)?,
        want,
        LOGITS,
    )?;
    println!(
        "patched vs transformers' logits: max |diff| = {:e}",
        d.max_abs_diff
    );

    // Save in the original layout: per-expert tensors, separate q/k/v with their biases.
    let out =
        std::env::temp_dir().join(format!("patchwork-complete-example-{}", std::process::id()));
    model.save_pretrained(&out, &SaveOptions::default())?;
    let same = same_checkpoint_tensors(&dir, &out);
    std::fs::remove_dir_all(&out)?;
    let same = same?;
    println!("saved: {same} tensors, identical to the original files");
    if same != 91 {
        return Err(format!("{same} tensors saved, the checkpoint has 91").into());
    }
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
