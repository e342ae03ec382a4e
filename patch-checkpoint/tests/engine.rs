//! The checkpoint engine end to end: conversion on load, resave of the reference checkpoints, sharded files, a fused replacement's transform, placeholders.

mod common;

use common::*;
use patch_checkpoint::{
    ConversionRegistry, Problem, SaveOptions, mappings, resave, save_pretrained,
};
use serde_json::json;

#[test]
fn qwen2_moe_experts_are_stacked_one_layer_at_a_time() {
    let dir = fixture("qwen2-moe-tiny");
    let raw = read_all(&dir);
    let (source, w) = load(&dir, mappings::qwen2_moe());
    let experts = w.pp("model.layers.2.mlp.experts");
    let gate_up = experts.get((8, 64, 64), "gate_up_proj").unwrap();
    let down = experts.get((8, 64, 32), "down_proj").unwrap();
    let report = source.report();
    assert_eq!(report.units_run, 2);
    assert_eq!(
        report.tensors_read,
        8 * 3,
        "only layer 2's experts are read"
    );
    let f32s = |k: &str| -> Vec<f32> { bytemuck_f32(&raw[k].2) };
    for e in 0..8 {
        let g = gate_up.get(e).unwrap();
        assert_eq!(
            values(&g.narrow(0, 0, 32).unwrap()),
            f32s(&format!("model.layers.2.mlp.experts.{e}.gate_proj.weight"))
        );
        assert_eq!(
            values(&g.narrow(0, 32, 32).unwrap()),
            f32s(&format!("model.layers.2.mlp.experts.{e}.up_proj.weight"))
        );
        assert_eq!(
            values(&down.get(e).unwrap()),
            f32s(&format!("model.layers.2.mlp.experts.{e}.down_proj.weight"))
        );
    }
}

#[test]
fn resave_reproduces_both_reference_checkpoints() {
    let mut registry = ConversionRegistry::new();
    registry
        .register("qwen2_moe", mappings::qwen2_moe(), false)
        .unwrap();
    for name in ["llama-tiny", "qwen2-moe-tiny"] {
        let out = tempfile::tempdir().unwrap();
        let report = resave(
            &fixture(name),
            out.path(),
            &registry,
            &SaveOptions::default(),
        )
        .unwrap();
        assert_same_tensors(&fixture(name), out.path());
        if name == "qwen2-moe-tiny" {
            assert_eq!(report.mapping.as_deref(), Some("qwen2_moe"));
            // Layers 0 and 2 are MoE: two units each.
            assert_eq!(report.load.units_run, 4);
            assert_eq!(report.load.transforms.len(), 2);
        } else {
            assert_eq!(report.mapping, None);
            assert_eq!(report.load.units_run, 0);
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        let original: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config, original);
    }
}

#[test]
fn sharded_checkpoint_loads_and_resaves() {
    let mut registry = ConversionRegistry::new();
    registry
        .register("Qwen2MoeForCausalLM", mappings::qwen2_moe(), false)
        .unwrap();
    let sharded = tempfile::tempdir().unwrap();
    let opts = SaveOptions {
        max_shard_size: 300_000,
        ..SaveOptions::default()
    };
    let report = resave(&fixture("qwen2-moe-tiny"), sharded.path(), &registry, &opts).unwrap();
    assert_eq!(
        report.mapping.as_deref(),
        Some("Qwen2MoeForCausalLM"),
        "the class name is found"
    );
    let shards = report
        .save
        .files
        .iter()
        .filter(|f| f.to_string_lossy().contains("-of-"))
        .count();
    assert!(shards >= 3, "{:?}", report.save.files);
    assert!(!sharded.path().join("model.safetensors").exists());
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sharded.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let total: u64 = read_all(&fixture("qwen2-moe-tiny"))
        .values()
        .map(|(_, _, b)| b.len() as u64)
        .sum();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 91);
    for f in std::fs::read_dir(sharded.path()).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "safetensors") {
            assert!(
                std::fs::metadata(&f).unwrap().len() < 300_000 + 4096,
                "{f:?} is over the limit"
            );
        }
    }
    assert_same_tensors(&fixture("qwen2-moe-tiny"), sharded.path());
    // The sharded folder loads (through the index) and saves back into one file.
    let single = tempfile::tempdir().unwrap();
    resave(
        sharded.path(),
        single.path(),
        &registry,
        &SaveOptions::default(),
    )
    .unwrap();
    assert!(single.path().join("model.safetensors").exists());
    assert_same_tensors(&fixture("qwen2-moe-tiny"), single.path());
    // Saving over an earlier sharded save removes the stale shards.
    resave(
        single.path(),
        sharded.path(),
        &registry,
        &SaveOptions::default(),
    )
    .unwrap();
    let left: Vec<_> = std::fs::read_dir(sharded.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("model"))
        .collect();
    assert_eq!(left, vec!["model.safetensors".to_string()]);
}

#[test]
fn fused_qkv_replacement_carries_its_transform_and_saves_back_exactly() {
    let (source, w) = build_fused_llama(false);
    w.finish().unwrap();
    let fired = source.report().transforms;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!((fired[0].owner.as_str(), fired[0].count), ("FusedQkv", 2));
    assert_eq!(source.report().units_run, 2);
    // Save: the fused tensors split back with the sizes seen at load (64, 32, 32).
    let out = tempfile::tempdir().unwrap();
    save_pretrained(
        out.path(),
        &json!({"model_type": "llama"}),
        &w,
        &[],
        &SaveOptions::default(),
    )
    .unwrap();
    assert_same_tensors(&fixture("llama-tiny"), out.path());
}

#[test]
fn placeholders_are_reported_and_never_saved() {
    let (_, w) = build_fused_llama(true);
    let p = problems(w.finish().unwrap_err());
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.iter().all(
        |p| matches!(p, Problem::Missing { name, .. } if name.contains("input_layernorm_as_linear"))
    ));
    let out = tempfile::tempdir().unwrap();
    let err =
        save_pretrained(out.path(), &json!({}), &w, &[], &SaveOptions::default()).unwrap_err();
    assert!(err.to_string().contains("placeholder"), "{err}");
}

#[test]
fn replacement_asking_for_per_expert_tensors_gets_the_raw_keys() {
    // The model's default (stacking) is registered, but layer 0's experts are a ModuleList:
    // its per-expert requests are served from the checkpoint keys and the stacking never
    // runs for layer 0. No overwrite needed.
    let dir = fixture("qwen2-moe-tiny");
    let (source, w) = load(&dir, mappings::qwen2_moe());
    for t in source.planned_tensors() {
        if t.name.starts_with("model.layers.0.mlp.experts.") {
            continue;
        }
        w.get(t.shape, &t.name).unwrap();
    }
    for e in 0..8 {
        let ex = w.pp(format!("model.layers.0.mlp.experts.{e}"));
        ex.get((32, 64), "gate_proj.weight").unwrap();
        ex.get((32, 64), "up_proj.weight").unwrap();
        ex.get((64, 32), "down_proj.weight").unwrap();
    }
    w.finish().unwrap();
    assert_eq!(source.report().units_run, 2, "only layer 2 is stacked");
    let out = tempfile::tempdir().unwrap();
    save_pretrained(
        out.path(),
        &json!({}),
        &w,
        &mappings::qwen2_moe(),
        &SaveOptions::default(),
    )
    .unwrap();
    assert_same_tensors(&dir, out.path());
}
