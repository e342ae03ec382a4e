//! The shared replacements of the examples, on the reference checkpoints: patched models
//! compute what transformers computed on the original layout.

use patch_core::ModuleExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use patch_core::{Module, PatchSet, Replacement};
use patchwork_examples::ModuleListExperts;
use patchwork_models::qwen2_moe::Qwen2MoeDecoderLayer;
use patchwork_models::{AutoModelForCausalLM, ForwardOptions, LoadOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

/// `max |a - b| <= 1e-4 * max(1, max |b|)`.
fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.dims(), b.dims(), "{what}");
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let tol = 1e-4 * b.iter().fold(1f32, |m, x| m.max(x.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst <= tol, "{what}: max diff {worst} > {tol}");
}

#[test]
fn module_list_experts_load_per_expert_keys_and_match_the_reference() {
    let patches =
        PatchSet::from_mapping([("Qwen2MoeExperts", Replacement::of::<ModuleListExperts>())])
            .unwrap();
    let model = AutoModelForCausalLM::from_pretrained(
        fixture("qwen2-moe-tiny"),
        &LoadOptions::default().with_patches(patches),
    )
    .unwrap();
    let layer: &dyn Module = &*model.model.layers[0];
    let layer = layer.downcast_ref::<Qwen2MoeDecoderLayer>().unwrap();
    let names: Vec<String> = model
        .weights()
        .params()
        .snapshot()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"model.layers.0.mlp.experts.7.down_proj.weight".to_string()));
    assert!(matches!(
        layer.mlp,
        patchwork_models::decoder::FeedForward::Sparse(_)
    ));
    let r = reference("qwen2-moe-tiny");
    let opts = ForwardOptions {
        output_router_logits: Some(true),
        ..ForwardOptions::default()
    };
    let out = model
        .forward_with(&r["input_ids"], None, None, &opts)
        .unwrap();
    assert_close("logits", out.logits.as_ref().unwrap(), &r["logits"]);
    for rec in &out.router_logits {
        let selected: Vec<i64> = r[&format!("selected_experts.{}", rec.layer)]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ours: Vec<u32> = rec.router.indices.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(ours.iter().map(|&x| x as i64).collect::<Vec<_>>(), selected);
    }
}

/// The fused-QKV replacement on `site` of `fixture`: the same logits as the default model,
/// `qkv_proj` loaded instead of q/k/v, and saving restores the separate q/k/v exactly.
fn fused_qkv_round_trip(fixture_name: &str, site: &str) {
    use patchwork_examples::{FusedQkvAttention, max_abs_diff, same_checkpoint_tensors};
    let dir = fixture(fixture_name);
    let plain = AutoModelForCausalLM::from_pretrained(
        &dir,
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )
    .unwrap();
    let patches = PatchSet::from_mapping([(site, Replacement::of::<FusedQkvAttention>())]).unwrap();
    let fused =
        AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default().with_patches(patches))
            .unwrap();
    let layers = fused.model.layers.len();
    assert_eq!(fused.report().patched(), layers);
    let names: Vec<String> = fused
        .weights()
        .params()
        .snapshot()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        names.contains(&"model.layers.0.self_attn.qkv_proj.weight".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("q_proj")), "{names:?}");
    let r = reference(fixture_name);
    let ours = fused.forward(&r["input_ids"], None).unwrap();
    assert_close("fused vs reference", &ours, &r["logits"]);
    let diff = max_abs_diff(&ours, &plain.forward(&r["input_ids"], None).unwrap()).unwrap();
    assert!(diff <= 1e-4, "fused vs default: {diff}");
    let out = tempfile::tempdir().unwrap();
    fused
        .save_pretrained(out.path(), &patch_core::checkpoint::SaveOptions::default())
        .unwrap();
    same_checkpoint_tensors(&dir, out.path()).unwrap();
}

#[test]
fn fused_qkv_attention_on_llama_matches_and_saves_back_separate_projections() {
    fused_qkv_round_trip("llama-tiny", "LlamaAttention");
}

#[test]
fn fused_qkv_attention_with_biases_on_qwen2_moe_matches_and_saves_back() {
    fused_qkv_round_trip("qwen2-moe-tiny", "Qwen2MoeAttention");
}
