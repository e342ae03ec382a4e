//! The upstream page's registration, pattern-matching, unregistering and cleanup blocks, in
//! Rust: register one patch and several at once (with `overwrite`), match several sites with
//! one pattern, see what is registered and why each site gets what it gets, unregister,
//! clear — and clean up with a guard instead of `try`/`finally`.
//!
//! `cargo run --release --example registration` (runs on the embedded fixtures).

use std::path::Path;

use candle_core::{Device, Tensor};
use patch_core::checkpoint::register_checkpoint_conversion_mapping;
use patch_core::{
    ModuleExt, PatchSet, Replacement, clear_patch_mapping, get_patch_mapping,
    register_patch_mapping, unregister_patch_mapping,
};
use patchwork_examples::{FusedQkvAttention, ModuleListExperts};
use patchwork_models::qwen2_moe::Qwen2MoeDecoderLayer;
use patchwork_models::{AutoModelForCausalLM, LoadOptions};

/// Clears the global registry when dropped, even on an early return or a panic: the Rust
/// form of the page's `try: ... finally: clear_patch_mapping()`.
struct ClearPatchesOnDrop;

impl Drop for ClearPatchesOnDrop {
    fn drop(&mut self) {
        clear_patch_mapping();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _cleanup = ClearPatchesOnDrop;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");

    // Register a single patch.
    register_patch_mapping(
        [("Qwen2MoeExperts", Replacement::of::<ModuleListExperts>())],
        false,
    )?;
    // Register several at once, replacing existing ones.
    register_patch_mapping(
        [
            ("Qwen2MoeExperts", Replacement::of::<ModuleListExperts>()),
            ("Qwen2MoeAttention", Replacement::of::<FusedQkvAttention>()),
        ],
        true,
    )?;
    // Without `overwrite`, an existing key is an error that says so.
    let err = register_patch_mapping(
        [("Qwen2MoeExperts", Replacement::of::<ModuleListExperts>())],
        false,
    )
    .expect_err("the key is registered");
    println!("registering it again without overwrite: {err}\n");

    // One pattern for several sites: every class whose name contains "Attention" and fills
    // the attention slot. Exact names win over patterns, so Qwen2MoeAttention keeps its own.
    register_patch_mapping(
        [(".*Attention", Replacement::of::<FusedQkvAttention>())],
        false,
    )?;
    register_patch_mapping(
        [
            (".*MoeExperts$", Replacement::of::<ModuleListExperts>()),
            // Matches Llama2Attention, Llama3Attention... none of which is linked here:
            // explain lists it among the patches matching no site.
            (
                r"^Llama\d+Attention$",
                Replacement::of::<FusedQkvAttention>(),
            ),
        ],
        false,
    )?;
    println!("registered:\n{}", get_patch_mapping());
    println!("{}", AutoModelForCausalLM::explain("qwen2_moe")?);
    println!("{}", AutoModelForCausalLM::explain("llama")?);

    // Patched models load with them: per-expert MLPs read the per-expert keys once the
    // default stacking mapping is out of the way (as upstream), the fused attention carries
    // its own q/k/v concatenation.
    register_checkpoint_conversion_mapping("qwen2_moe", Vec::new(), true)?;
    let model = AutoModelForCausalLM::from_pretrained(
        fixtures.join("qwen2-moe-tiny"),
        &LoadOptions::default(),
    )?;
    let layer = model.model.layers[0]
        .downcast_ref::<Qwen2MoeDecoderLayer>()
        .ok_or("layer 0 is a Qwen2MoeDecoderLayer")?;
    println!("model.layers[0].self_attn: {}", layer.self_attn.type_name());
    let input = Tensor::new(&[[66u32, 221, 47, 234]], &Device::Cpu)?;
    println!("logits: {:?}\n", model.forward(&input, None)?.dims());

    // Unregister one key, several, a pattern; an unknown key is an error naming what exists.
    unregister_patch_mapping(["Qwen2MoeExperts"])?;
    unregister_patch_mapping([".*MoeExperts$", r"^Llama\d+Attention$"])?;
    unregister_patch_mapping([".*Attention"])?;
    let err = unregister_patch_mapping(["Qwen2MoeMLP"]).expect_err("never registered");
    println!("unregistering an unknown key: {err}");
    println!("left:\n{}", get_patch_mapping());

    // Clear everything (the guard would do it too when `main` returns).
    clear_patch_mapping();
    assert!(get_patch_mapping().is_empty());

    // The alternative that needs no cleanup at all: a PatchSet handed to the load, touching no
    // global state.
    let patches =
        PatchSet::from_mapping([(".*Attention", Replacement::of::<FusedQkvAttention>())])?;
    let model = AutoModelForCausalLM::from_pretrained(
        fixtures.join("llama-tiny"),
        &LoadOptions::default().with_patches(patches),
    )?;
    println!(
        "with an explicit PatchSet: {} patched sites",
        model.report().patched()
    );
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
