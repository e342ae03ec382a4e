//! The upstream page's "weight size mismatch" block, in Rust: a fused-QKV attention whose
//! `qkv_proj` does not exist in Llama checkpoints. Registered alone, the load fails with one
//! error listing what is missing and what went unused; a conversion mapping that concatenates
//! q/k/v fixes it, as upstream. Then the patchwork way: the replacement carries its
//! transform, so using it cannot leave weights unmatched. Either way the model computes what
//! the original does (and what transformers computed on the original files) and saves back
//! to separate q/k/v.
//!
//! `cargo run --release --example weight_conversion` (runs on the embedded llama-tiny; every
//! claim above is checked as it runs, and under `cargo test`).

use std::path::Path;

use candle_core::{Device, Tensor};
use patch_core::checkpoint::{
    Op, SaveOptions, WeightConverter, register_checkpoint_conversion_mapping,
    unregister_checkpoint_conversion_mapping,
};
use patch_core::{Build, Builder, PatchSet, Replacement};
use patchwork_examples::{FusedQkvAttention, same_checkpoint_tensors};
use patchwork_models::decoder::{Attention, AttentionArgs, LayerContext};
use patchwork_models::{AutoModelForCausalLM, CausalLM, LoadOptions};
use patchwork_testing::{LOGITS, check_close};

/// Checks `model` computes the `original` logits on `input`, and transformers' on the
/// fixture's reference input; prints both differences.
fn check_logits(
    what: &str,
    model: &CausalLM,
    input: &Tensor,
    original: &Tensor,
    dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let d = check_close(what, &model.forward(input, None)?, original, LOGITS)?;
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    let t = check_close(
        what,
        &model.forward(&r["input_ids"], None)?,
        &r["logits"],
        LOGITS,
    )?;
    println!(
        "{what}: logits max |diff| vs the original {:e}, vs transformers {:e}",
        d.max_abs_diff, t.max_abs_diff
    );
    Ok(())
}

/// Upstream's `LlamaFusedAttention`: a fused q/k/v projection that, unlike
/// [`FusedQkvAttention`], carries no transform: its layout needs a registered mapping.
pub struct LlamaFusedAttention(FusedQkvAttention);

impl Build for LlamaFusedAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> patch_core::Result<Box<dyn Attention>> {
        Ok(Box::new(Self(FusedQkvAttention::new(b, args)?)))
    }
}

impl Attention for LlamaFusedAttention {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        self.0.forward(x, ctx)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llama-tiny");
    let input = Tensor::new(&[[66u32, 221, 47, 234, 117, 102]], &Device::Cpu)?;
    let original = AutoModelForCausalLM::from_pretrained(
        &dir,
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )?;
    let expected = original.forward(&input, None)?;

    // The patch alone: the checkpoint has q_proj/k_proj/v_proj, the module asks for qkv_proj.
    let fused =
        PatchSet::from_mapping([("LlamaAttention", Replacement::of::<LlamaFusedAttention>())])?;
    let options = LoadOptions::default().with_patches(fused);
    let err = AutoModelForCausalLM::from_pretrained(&dir, &options)
        .err()
        .ok_or("loaded without a conversion mapping")?
        .to_string();
    println!("without a conversion mapping:\n{err}\n");
    if !(err.contains("qkv_proj") && err.contains("q_proj")) {
        return Err("the error names neither the missing qkv_proj nor the unused q_proj".into());
    }

    // Register the conversion the layout needs, as upstream does.
    register_checkpoint_conversion_mapping(
        "llama",
        vec![
            WeightConverter::new(
                ["q_proj", "k_proj", "v_proj"],
                ["qkv_proj"],
                [Op::Concatenate { dim: 0 }],
            )
            .into(),
        ],
        true,
    )?;
    let model = AutoModelForCausalLM::from_pretrained(&dir, &options)?;
    check_logits("with the mapping", &model, &input, &expected, &dir)?;
    unregister_checkpoint_conversion_mapping("llama")?;

    // The patchwork way: FusedQkvAttention carries the concatenation itself (scoped to the
    // paths it is built at), so no mapping is needed and none can be forgotten.
    let carried =
        PatchSet::from_mapping([("LlamaAttention", Replacement::of::<FusedQkvAttention>())])?;
    let model =
        AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default().with_patches(carried))?;
    check_logits(
        "with the carried transform",
        &model,
        &input,
        &expected,
        &dir,
    )?;

    // Saving reverses it: separate q/k/v, every tensor identical to the original files.
    let out = std::env::temp_dir().join(format!(
        "patchwork-weight-conversion-{}",
        std::process::id()
    ));
    model.save_pretrained(&out, &SaveOptions::default())?;
    let same = same_checkpoint_tensors(&dir, &out);
    std::fs::remove_dir_all(&out)?;
    println!("saved: {} tensors identical to the original files", same?);
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
