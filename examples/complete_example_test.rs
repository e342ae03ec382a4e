//! The upstream page's complete example (`complete_example.rs`), checked: ModuleList experts
//! and a fused-QKV attention with biases, the default expert-stacking mapping overridden, the
//! same logits as the default model and the original files saved back exactly. (Its own test
//! binary: it changes the global registries.)

use patch_core::ModuleExt;
use std::path::Path;

use candle_core::{Device, Tensor};
use patch_core::checkpoint::{SaveOptions, register_checkpoint_conversion_mapping};
use patch_core::{PatchSet, Replacement, register_patch_mapping};
use patchwork_examples::{
    FusedQkvAttention, ModuleListExperts, max_abs_diff, same_checkpoint_tensors,
};
use patchwork_models::decoder::FeedForward;
use patchwork_models::qwen2_moe::{Qwen2MoeDecoderLayer, Qwen2MoeSparseMoeBlock};
use patchwork_models::{AutoModelForCausalLM, LoadOptions};

#[test]
fn module_list_experts_and_fused_qkv_load_match_and_save_back_exactly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2-moe-tiny");
    let input = Tensor::new(
        &[
            [66u32, 221, 47, 234, 117, 102, 13, 226],
            [5, 6, 7, 8, 9, 10, 11, 12],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let default = AutoModelForCausalLM::from_pretrained(
        &dir,
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )
    .unwrap();
    let expected = default.forward(&input, None).unwrap();

    register_patch_mapping(
        [
            ("Qwen2MoeExperts", Replacement::of::<ModuleListExperts>()),
            ("Qwen2MoeAttention", Replacement::of::<FusedQkvAttention>()),
        ],
        false,
    )
    .unwrap();
    // Without overwrite, the family's link-time default is in the way, as upstream.
    let e = register_checkpoint_conversion_mapping("qwen2_moe", Vec::new(), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("already registered for \"qwen2_moe\"") && e.contains("overwrite = true"),
        "{e}"
    );
    register_checkpoint_conversion_mapping("qwen2_moe", Vec::new(), true).unwrap();

    let model = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default()).unwrap();
    let layer = model.model.layers[0]
        .downcast_ref::<Qwen2MoeDecoderLayer>()
        .unwrap();
    assert!(layer.self_attn.is::<FusedQkvAttention>());
    let FeedForward::Sparse(block) = &layer.mlp else {
        panic!("layer 0 is sparse")
    };
    let block = block.downcast_ref::<Qwen2MoeSparseMoeBlock>().unwrap();
    assert!(block.experts.is::<ModuleListExperts>());
    // 3 attentions and 2 expert lists replaced.
    assert_eq!(model.report().patched(), 5);

    let diff = max_abs_diff(&model.forward(&input, None).unwrap(), &expected).unwrap();
    assert!(diff <= 1e-4, "patched vs default logits: {diff}");

    let out = tempfile::tempdir().unwrap();
    model
        .save_pretrained(out.path(), &SaveOptions::default())
        .unwrap();
    let n = same_checkpoint_tensors(&dir, out.path()).unwrap();
    assert_eq!(n, 91);
}
