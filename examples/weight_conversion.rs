//! The upstream page's "weight size mismatch" block, in Rust: a fused-QKV attention whose
//! `qkv_proj` does not exist in Llama checkpoints. Registered alone, the load fails with one
//! error listing what is missing and what went unused; a conversion mapping that concatenates
//! q/k/v fixes it, as upstream. Then the patchwork way: the replacement carries its
//! transform, so using it cannot leave weights unmatched. Either way the model computes what
//! the original does and saves back to separate q/k/v.
//!
//! `cargo run --release --example weight_conversion` (runs on the embedded llama-tiny).

use std::path::Path;

use candle_core::{Device, Tensor};
use patch_core::checkpoint::{
    Op, SaveOptions, WeightConverter, register_checkpoint_conversion_mapping,
    unregister_checkpoint_conversion_mapping,
};
use patch_core::{Build, Builder, PatchSet, Replacement};
use patchwork_examples::{FusedQkvAttention, max_abs_diff, same_checkpoint_tensors};
use patchwork_models::decoder::{Attention, AttentionArgs, LayerContext};
use patchwork_models::{AutoModelForCausalLM, LoadOptions};

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
    let err = AutoModelForCausalLM::from_pretrained(&dir, &options).expect_err("weights unmatched");
    println!("without a conversion mapping:\n{err}\n");

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
    let diff = max_abs_diff(&model.forward(&input, None)?, &expected)?;
    println!("with the mapping: logits max |diff| vs the original = {diff:e}");
    unregister_checkpoint_conversion_mapping("llama")?;

    // The patchwork way: FusedQkvAttention carries the concatenation itself (scoped to the
    // paths it is built at), so no mapping is needed and none can be forgotten.
    let carried =
        PatchSet::from_mapping([("LlamaAttention", Replacement::of::<FusedQkvAttention>())])?;
    let model =
        AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default().with_patches(carried))?;
    let diff = max_abs_diff(&model.forward(&input, None)?, &expected)?;
    println!("with the carried transform: logits max |diff| vs the original = {diff:e}");

    // Saving reverses it: separate q/k/v, every tensor identical to the original files.
    let out = std::env::temp_dir().join(format!(
        "patchwork-weight-conversion-{}",
        std::process::id()
    ));
    model.save_pretrained(&out, &SaveOptions::default())?;
    let same = same_checkpoint_tensors(&dir, &out)?;
    println!("saved: {same} tensors identical to the original files");
    std::fs::remove_dir_all(&out)?;
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
