//! The checkpoint engine end to end: conversion on load, strict accounting, save through the
//! reverse transforms, registry, resave of the reference checkpoints.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::*;
use patch_checkpoint::{
    Checkpoint, CheckpointSource, ConversionRegistry, Error, Op, Problem, RandomInit, SaveOptions,
    Transform, WeightConverter, WeightRenaming, Weights, mappings, resave, save_pretrained,
};
use serde_json::json;

fn load(dir: &std::path::Path, transforms: Vec<Transform>) -> (Arc<CheckpointSource>, Weights) {
    let source = Arc::new(Checkpoint::open(dir).unwrap().source(transforms).unwrap());
    let weights = Weights::from_arc(source.clone(), DType::F32, &Device::Cpu);
    (source, weights)
}

fn problems(err: Error) -> Vec<Problem> {
    match err {
        Error::Accounting { problems, .. } => problems,
        other => panic!("expected an accounting error, got {other}"),
    }
}

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

fn bytemuck_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
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

/// Builds llama-tiny as a model with a fused-QKV replacement would, optionally asking for one
/// tensor the checkpoint does not have (per layer).
fn build_fused_llama(bogus: bool) -> (Arc<CheckpointSource>, Weights) {
    // llama-tiny has GQA: q [64, 64], k and v [32, 64]; the fused tensor is [128, 64].
    let dir = fixture("llama-tiny");
    let raw = read_all(&dir);
    let (source, w) = load(&dir, Vec::new());
    let fused = vec![Transform::from(WeightConverter::new(
        ["q_proj", "k_proj", "v_proj"],
        ["qkv_proj"],
        [Op::Concatenate { dim: 0 }],
    ))];
    for layer in 0..2 {
        let attn = w
            .pp(format!("model.layers.{layer}.self_attn"))
            .with_transforms("FusedQkv", fused.clone());
        let qkv = attn.get((128, 64), "qkv_proj.weight").unwrap();
        let mut expected = Vec::new();
        for p in ["q_proj", "k_proj", "v_proj"] {
            expected.extend(bytemuck_f32(
                &raw[&format!("model.layers.{layer}.self_attn.{p}.weight")].2,
            ));
        }
        assert_eq!(values(&qkv), expected);
        attn.get((64, 64), "o_proj.weight").unwrap();
        // Through candle-nn too.
        let vb = w.pp(format!("model.layers.{layer}")).var_builder();
        if bogus {
            // A name the checkpoint does not have: a placeholder, reported by `finish`.
            let l = candle_nn::linear_no_bias(64, 64, vb.pp("input_layernorm_as_linear")).unwrap();
            assert_eq!(l.weight().dims(), &[64, 64]);
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            vb.pp(n).get(64, "weight").unwrap();
        }
        let mlp = vb.pp("mlp");
        candle_nn::linear_no_bias(64, 160, mlp.pp("gate_proj")).unwrap();
        candle_nn::linear_no_bias(64, 160, mlp.pp("up_proj")).unwrap();
        candle_nn::linear_no_bias(160, 64, mlp.pp("down_proj")).unwrap();
    }
    w.get((256, 64), "model.embed_tokens.weight").unwrap();
    w.get(64, "model.norm.weight").unwrap();
    w.tie("lm_head.weight", "model.embed_tokens.weight");
    (source, w)
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

#[test]
fn strict_accounting_lists_every_problem_with_its_transform_chain() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(
        tmp.path(),
        json!({"model_type": "toy"}),
        vec![
            ("model.a.weight", ramp(&[2, 3], 0.0)),
            ("old.c.weight", ramp(&[5], 0.0)),
            ("model.attn.q_proj.weight", ramp(&[2, 2], 0.0)),
            ("model.attn.k_proj.weight", ramp(&[2, 2], 1.0)),
            ("model.attn.v_proj.weight", ramp(&[2, 2], 2.0)),
            ("model.ok.weight", ramp(&[4], 0.0)),
            ("model.attn2.q_proj.weight", ramp(&[2, 2], 0.0)),
            ("model.attn2.k_proj.weight", ramp(&[2, 2], 1.0)),
            ("model.attn2.v_proj.weight", ramp(&[2, 2], 2.0)),
        ],
    );
    let transforms = vec![
        WeightRenaming::new(r"^old\.", "model.").into(),
        WeightConverter::new(
            ["q_proj", "k_proj", "v_proj"],
            ["qkv_proj"],
            [Op::Concatenate { dim: 0 }],
        )
        .into(),
    ];
    let (_, w) = load(tmp.path(), transforms);
    // Mis-shaped: a placeholder of the asked shape comes back, the build goes on.
    let t = w.get((3, 2), "model.a.weight").unwrap();
    assert_eq!(t.dims(), &[3, 2]);
    // Missing.
    let t = w.get((7,), "model.missing.weight").unwrap();
    assert_eq!(t.dims(), &[7]);
    // Mis-shaped through a converter.
    w.get((5, 2), "model.attn.qkv_proj.weight").unwrap();
    w.get(4, "model.ok.weight").unwrap();
    let err = w.finish().unwrap_err();
    let text = err.to_string();
    let p = problems(err);
    let kinds: Vec<&str> = p.iter().map(Problem::kind).collect();
    assert_eq!(
        kinds,
        vec![
            "missing",
            "mis-shaped",
            "mis-shaped",
            "unexpected",
            "unexpected",
            "unexpected",
            "unexpected"
        ],
        "{text}"
    );
    assert!(text.contains("model.missing.weight [7]"), "{text}");
    assert!(
        text.contains("model.a.weight: the module asked for [3, 2], the checkpoint gives [2, 3]"),
        "{text}"
    );
    assert!(
        text.contains("model.attn.qkv_proj.weight: the module asked for [5, 2], the checkpoint gives [6, 2]: made by WeightConverter"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"old.c.weight: loads as "model.c.weight" via WeightRenaming("^old\\." -> "model.")"#
        ),
        "{text}"
    );
    assert!(
        text.contains("model.attn2.k_proj.weight: source of WeightConverter"),
        "{text}"
    );
    // The keys of failed requests are reported with them, not again as unused.
    assert!(!text.contains("unexpected  model.a.weight"), "{text}");
    assert!(
        !text.contains("unexpected  model.attn.q_proj.weight"),
        "{text}"
    );
    assert!(
        text.starts_with(&format!(
            "checkpoint {}: 7 problems (1 missing, 2 mis-shaped, 4 unexpected)",
            tmp.path().display()
        )),
        "{text}"
    );
}

#[test]
fn missing_tensor_error_points_at_nearby_keys_and_scopes() {
    let dir = fixture("llama-tiny");
    let (_, w) = load(&dir, Vec::new());
    let attn = w.pp("model.layers.0.self_attn").with_transforms(
        "NotQuiteFused",
        vec![
            WeightConverter::new(
                ["q_proj", "k_proj"],
                ["qk_proj"],
                [Op::Concatenate { dim: 0 }],
            )
            .into(),
        ],
    );
    attn.get((192, 64), "qkv_proj.weight").unwrap();
    let text = w.finish().unwrap_err().to_string();
    assert!(text.contains("missing     model.layers.0.self_attn.qkv_proj.weight [192, 64]: no checkpoint key and no conversion produces it; transforms in scope: NotQuiteFused at \"model.layers.0.self_attn\"; unused keys under \"model.layers.0.self_attn\": k_proj.weight, o_proj.weight, q_proj.weight, v_proj.weight"), "{text}");
}

#[test]
fn incomplete_module_list_is_a_conversion_problem() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(
        tmp.path(),
        json!({}),
        vec![
            ("m.experts.0.down_proj.weight", ramp(&[2, 2], 0.0)),
            ("m.experts.2.down_proj.weight", ramp(&[2, 2], 0.0)),
        ],
    );
    let (_, w) = load(tmp.path(), mappings::qwen2_moe());
    w.get((3, 2, 2), "m.mlp.experts.down_proj").unwrap();
    let err = w.finish().unwrap_err().to_string();
    // `mlp.experts.*` does not match `m.experts.*`: the request is missing, the keys unused.
    assert!(err.contains("missing     m.mlp.experts.down_proj"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(
        tmp.path(),
        json!({}),
        vec![
            ("m.mlp.experts.0.down_proj.weight", ramp(&[2, 2], 0.0)),
            ("m.mlp.experts.2.down_proj.weight", ramp(&[2, 2], 0.0)),
        ],
    );
    let (_, w) = load(tmp.path(), mappings::qwen2_moe());
    w.get((3, 2, 2), "m.mlp.experts.down_proj").unwrap();
    let p = problems(w.finish().unwrap_err());
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        matches!(&p[0], Problem::Conversion { name, detail } if name == "m.mlp.experts.down_proj" && detail.contains("indices [0, 2]: missing [1]")),
        "{p:?}"
    );
    // Not asked for: the keys are reported as unused, saying why their unit cannot run.
    let (_, w) = load(tmp.path(), mappings::qwen2_moe());
    let p = problems(w.finish().unwrap_err());
    assert!(
        matches!(&p[0], Problem::Unexpected { detail, .. } if detail.contains("cannot run")),
        "{p:?}"
    );
}

#[test]
fn chunk_outputs_are_cached_until_asked_and_reported_if_never_asked() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(
        tmp.path(),
        json!({}),
        vec![("attn.qkv.weight", ramp(&[6, 2], 0.0))],
    );
    let transforms =
        vec![WeightConverter::new(["qkv"], ["q", "k", "v"], [Op::Chunk { dim: 0 }]).into()];
    let (source, w) = load(tmp.path(), transforms);
    let q = w.get((2, 2), "attn.q.weight").unwrap();
    let k = w.get((2, 2), "attn.k.weight").unwrap();
    assert_eq!(values(&q), vec![0.0, 0.25, 0.5, 0.75]);
    assert_eq!(values(&k), vec![1.0, 1.25, 1.5, 1.75]);
    assert_eq!(source.report().units_run, 1, "k came from the cache");
    let p = problems(w.finish().unwrap_err());
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        matches!(&p[0], Problem::Unexpected { key, detail } if key == "attn.v.weight" && detail.contains("never asked for itself"))
    );
    // Asking for the third too: all accounted for, and saving fuses them back exactly.
    w.get((2, 2), "attn.v.weight").unwrap();
    w.finish().unwrap();
    let out = tempfile::tempdir().unwrap();
    save_pretrained(out.path(), &json!({}), &w, &[], &SaveOptions::default()).unwrap();
    assert_same_tensors(tmp.path(), out.path());
}

#[test]
fn tied_head_stored_in_the_checkpoint_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(
        tmp.path(),
        json!({"tie_word_embeddings": true}),
        vec![
            ("model.embed_tokens.weight", ramp(&[4, 2], 0.0)),
            ("lm_head.weight", ramp(&[4, 2], 0.0)),
        ],
    );
    let (_, w) = load(tmp.path(), Vec::new());
    w.get((4, 2), "model.embed_tokens.weight").unwrap();
    w.tie("lm_head.weight", "model.embed_tokens.weight");
    let p = problems(w.finish().unwrap_err());
    assert_eq!(
        p,
        vec![Problem::TiedButStored {
            alias: "lm_head.weight".into(),
            target: "model.embed_tokens.weight".into()
        }]
    );
    // Allowed explicitly: fine, and saving leaves the alias out.
    let source = Arc::new(
        Checkpoint::open(tmp.path())
            .unwrap()
            .source(Vec::new())
            .unwrap()
            .allow_unused(r"^lm_head\.weight$")
            .unwrap(),
    );
    let w = Weights::from_arc(source, DType::F32, &Device::Cpu);
    w.get((4, 2), "model.embed_tokens.weight").unwrap();
    w.tie("lm_head.weight", "model.embed_tokens.weight");
    w.finish().unwrap();
    let out = tempfile::tempdir().unwrap();
    save_pretrained(out.path(), &json!({}), &w, &[], &SaveOptions::default()).unwrap();
    assert_eq!(
        read_all(out.path()).keys().collect::<Vec<_>>(),
        vec!["model.embed_tokens.weight"]
    );
}

#[test]
fn two_keys_renamed_to_one_name_and_bad_scoped_transforms_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(
        tmp.path(),
        json!({}),
        vec![("a.x", ramp(&[1], 0.0)), ("b.x", ramp(&[1], 0.0))],
    );
    let (_, w) = load(tmp.path(), vec![WeightRenaming::new(r"^a\.", "b.").into()]);
    w.get(1, "b.x").unwrap();
    w.pp("b")
        .with_transforms(
            "Broken",
            vec![WeightConverter::new(["x", "y"], ["z"], []).into()],
        )
        .get(1, "x")
        .unwrap();
    let p = problems(w.finish().unwrap_err());
    assert!(
        matches!(&p[0], Problem::InvalidTransform { owner, message } if owner.contains("Broken") && message.contains("2 tensors but there are 1 target")),
        "{p:?}"
    );
    assert!(
        matches!(&p[1], Problem::Conflict { detail } if detail.contains("both load as \"b.x\"")),
        "{p:?}"
    );
}

#[test]
fn renamed_keys_save_back_under_their_original_names() {
    // Anchored: `encoder.layers.N` loads as `layers.N`; `vision.encoder.layers.N` is untouched.
    let tmp = tempfile::tempdir().unwrap();
    let keys = [
        "encoder.layers.0.w",
        "vision.encoder.layers.0.w",
        "lm_head.weight",
    ];
    write_checkpoint(
        tmp.path(),
        json!({}),
        keys.iter()
            .enumerate()
            .map(|(i, k)| (*k, ramp(&[2], i as f32)))
            .collect(),
    );
    let anchored = vec![Transform::from(WeightRenaming::new(
        r"^encoder\.layers",
        "layers",
    ))];
    let (_, w) = load(tmp.path(), anchored.clone());
    for name in ["layers.0.w", "vision.encoder.layers.0.w", "lm_head.weight"] {
        w.get(2, name).unwrap();
    }
    w.finish().unwrap();
    let out = tempfile::tempdir().unwrap();
    save_pretrained(
        out.path(),
        &json!({}),
        &w,
        &anchored,
        &SaveOptions::default(),
    )
    .unwrap();
    assert_same_tensors(tmp.path(), out.path());

    // The same model built from its config: the reverse renaming must not double the prefix
    // of `vision.encoder.layers` (the upstream bug), and must restore `encoder.layers`.
    let w = Weights::new(RandomInit::new(1, 0.02), DType::F32, &Device::Cpu);
    for name in ["layers.0.w", "vision.encoder.layers.0.w", "lm_head.weight"] {
        w.get(2, name).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    save_pretrained(
        out.path(),
        &json!({}),
        &w,
        &anchored,
        &SaveOptions::default(),
    )
    .unwrap();
    let saved: Vec<String> = read_all(out.path()).into_keys().collect();
    assert_eq!(
        saved,
        vec![
            "encoder.layers.0.w",
            "lm_head.weight",
            "vision.encoder.layers.0.w"
        ]
    );

    // Unanchored: every `encoder.layers` is renamed on load, so load-then-save must restore
    // exactly the stored keys, and a config-built model's keys must load back as its names.
    let unanchored = vec![Transform::from(WeightRenaming::new(
        "encoder.layers",
        "layers",
    ))];
    let (_, w) = load(tmp.path(), unanchored.clone());
    for name in ["layers.0.w", "vision.layers.0.w", "lm_head.weight"] {
        w.get(2, name).unwrap();
    }
    w.finish().unwrap();
    let out = tempfile::tempdir().unwrap();
    save_pretrained(
        out.path(),
        &json!({}),
        &w,
        &unanchored,
        &SaveOptions::default(),
    )
    .unwrap();
    assert_same_tensors(tmp.path(), out.path());

    let w = Weights::new(RandomInit::new(1, 0.02), DType::F32, &Device::Cpu);
    let names = [
        "layers.0.w",
        "vision.encoder.layers.0.w",
        "decoder.layers.0.w",
    ];
    for name in names {
        w.get(2, name).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    save_pretrained(
        out.path(),
        &json!({}),
        &w,
        &unanchored,
        &SaveOptions::default(),
    )
    .unwrap();
    let (_, back) = load(out.path(), unanchored);
    for name in names {
        assert_eq!(
            values(&back.get(2, name).unwrap()),
            values(&w.params().get(name).unwrap()),
            "{name}"
        );
    }
    back.finish().unwrap();
}

#[test]
fn model_built_from_config_saves_in_checkpoint_layout_and_loads_back() {
    let registry = mappings::qwen2_moe();
    let fused = vec![Transform::from(WeightConverter::new(
        ["q_proj", "k_proj", "v_proj"],
        ["qkv_proj"],
        [Op::Concatenate { dim: 0 }],
    ))];
    let build = |w: &Weights| -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let layer = w.pp("model.layers.0");
        let attn = layer
            .pp("self_attn")
            .with_transforms("FusedQkv", fused.clone());
        out.push((
            "model.layers.0.self_attn.qkv_proj.weight",
            attn.get((24, 8), "qkv_proj.weight").unwrap(),
        ));
        out.push((
            "model.layers.0.self_attn.qkv_proj.bias",
            attn.get(24, "qkv_proj.bias").unwrap(),
        ));
        let ex = layer.pp("mlp.experts");
        out.push((
            "model.layers.0.mlp.experts.gate_up_proj",
            ex.get((3, 10, 8), "gate_up_proj").unwrap(),
        ));
        out.push((
            "model.layers.0.mlp.experts.down_proj",
            ex.get((3, 8, 5), "down_proj").unwrap(),
        ));
        out.push(("lm_head.weight", w.get((11, 8), "lm_head.weight").unwrap()));
        out.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
    };
    let w = Weights::new(RandomInit::new(7, 0.5), DType::F32, &Device::Cpu);
    let built = build(&w);
    let out = tempfile::tempdir().unwrap();
    save_pretrained(
        out.path(),
        &json!({"model_type": "qwen2_moe"}),
        &w,
        &registry,
        &SaveOptions::default(),
    )
    .unwrap();
    let saved = read_all(out.path());
    let mut expected: Vec<String> = vec!["lm_head.weight".into()];
    for p in ["q", "k", "v"] {
        expected.push(format!("model.layers.0.self_attn.{p}_proj.weight"));
        expected.push(format!("model.layers.0.self_attn.{p}_proj.bias"));
    }
    for e in 0..3 {
        for p in ["gate", "up", "down"] {
            expected.push(format!("model.layers.0.mlp.experts.{e}.{p}_proj.weight"));
        }
    }
    expected.sort();
    assert_eq!(saved.keys().cloned().collect::<Vec<_>>(), expected);
    assert_eq!(
        saved["model.layers.0.self_attn.k_proj.weight"].1,
        vec![8, 8]
    );
    assert_eq!(
        saved["model.layers.0.mlp.experts.2.up_proj.weight"].1,
        vec![5, 8]
    );
    assert_eq!(
        saved["model.layers.0.mlp.experts.1.down_proj.weight"].1,
        vec![8, 5]
    );
    // Loading the saved folder the same way gives the same tensors back.
    let (_, back) = load(out.path(), registry);
    let again = build(&back);
    back.finish().unwrap();
    for ((n, a), (_, b)) in built.iter().zip(&again) {
        assert_eq!(values(a), values(b), "{n}");
    }
}

#[test]
fn half_precision_files_load_into_any_compute_dtype_and_save_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let base = ramp(&[3, 4], -1.0);
    write_checkpoint(
        tmp.path(),
        json!({}),
        vec![
            ("bf", base.to_dtype(DType::BF16).unwrap()),
            ("f16", base.to_dtype(DType::F16).unwrap()),
            ("f32", base.clone()),
        ],
    );
    let (_, w) = load(tmp.path(), Vec::new());
    for n in ["bf", "f16", "f32"] {
        let t = w.get((3, 4), n).unwrap();
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(values(&t), values(&base), "{n}");
    }
    w.finish().unwrap();
    let out = tempfile::tempdir().unwrap();
    save_pretrained(out.path(), &json!({}), &w, &[], &SaveOptions::default()).unwrap();
    assert_same_tensors(tmp.path(), out.path());
    let (_, w) = load(tmp.path(), Vec::new());
    assert_eq!(
        w.with_dtype(DType::BF16)
            .get((3, 4), "f32")
            .unwrap()
            .dtype(),
        DType::BF16
    );
}

#[test]
fn saving_into_the_loaded_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(tmp.path(), json!({}), vec![("a", ramp(&[2], 0.0))]);
    let (_, w) = load(tmp.path(), Vec::new());
    w.get(2, "a").unwrap();
    let err =
        save_pretrained(tmp.path(), &json!({}), &w, &[], &SaveOptions::default()).unwrap_err();
    assert!(err.to_string().contains("save to another folder"), "{err}");
}

#[test]
fn sharded_index_pointing_at_the_wrong_file_is_an_error() {
    let mut registry = ConversionRegistry::new();
    registry
        .register("qwen2_moe", mappings::qwen2_moe(), false)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = SaveOptions {
        max_shard_size: 400_000,
        ..SaveOptions::default()
    };
    resave(&fixture("qwen2-moe-tiny"), dir.path(), &registry, &opts).unwrap();
    let path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    index["weight_map"]["lm_head.weight"] = json!("model-00002-of-00003.safetensors");
    std::fs::write(&path, index.to_string()).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("lists \"lm_head.weight\" in model-00002-of-00003.safetensors, which does not contain it"), "{err}");
}

fn fused() -> Vec<Transform> {
    vec![
        WeightConverter::new(
            ["q_proj", "k_proj", "v_proj"],
            ["qkv_proj"],
            [Op::Concatenate { dim: 0 }],
        )
        .into(),
    ]
}
fn renamed() -> Vec<Transform> {
    vec![WeightRenaming::new(r"^transformer\.", "model.").into()]
}
patch_checkpoint::submit_conversion_mapping!("engine_test_default", fused);
patch_checkpoint::submit_conversion_mapping!("engine_test_conflict", fused);
patch_checkpoint::submit_conversion_mapping!("engine_test_conflict", renamed);

#[test]
fn registry_semantics() {
    use patch_checkpoint::{
        checkpoint_conversion_mapping_for, get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping, unregister_checkpoint_conversion_mapping,
    };
    // Link-time defaults are there, built lazily.
    assert_eq!(
        get_checkpoint_conversion_mapping("engine_test_default").unwrap(),
        Some(fused())
    );
    // An existing key without overwrite is an error naming the key and where it came from.
    let err = register_checkpoint_conversion_mapping("engine_test_default", renamed(), false)
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::KeyExists { .. }), "{text}");
    assert!(
        text.contains("\"engine_test_default\"") && text.contains("engine.rs"),
        "{text}"
    );
    register_checkpoint_conversion_mapping("engine_test_default", renamed(), true).unwrap();
    assert_eq!(
        get_checkpoint_conversion_mapping("engine_test_default").unwrap(),
        Some(renamed())
    );
    // Two different link-time defaults: reported on lookup until overwritten.
    let err = get_checkpoint_conversion_mapping("engine_test_conflict").unwrap_err();
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    register_checkpoint_conversion_mapping("engine_test_conflict", fused(), true).unwrap();
    assert_eq!(
        get_checkpoint_conversion_mapping("engine_test_conflict").unwrap(),
        Some(fused())
    );
    // Unregister: returns the mapping; an unknown key is an error listing the known ones.
    assert_eq!(
        unregister_checkpoint_conversion_mapping("engine_test_conflict").unwrap(),
        fused()
    );
    let err = unregister_checkpoint_conversion_mapping("engine_test_conflict").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownKey { known, .. } if known.contains("engine_test_default")),
        "{err}"
    );
    // Invalid transforms are refused at registration.
    let bad = vec![WeightConverter::new(["a", "b"], ["c"], []).into()];
    assert!(matches!(
        register_checkpoint_conversion_mapping("engine_test_bad", bad, false),
        Err(Error::Transform { .. })
    ));
    assert_eq!(
        get_checkpoint_conversion_mapping("engine_test_bad").unwrap(),
        None
    );
    // A class name beats the model type, whatever the registration order.
    register_checkpoint_conversion_mapping("engine_test_type", fused(), false).unwrap();
    register_checkpoint_conversion_mapping("EngineTestForCausalLM", renamed(), false).unwrap();
    let config =
        json!({"architectures": ["EngineTestForCausalLM"], "model_type": "engine_test_type"});
    assert_eq!(
        checkpoint_conversion_mapping_for(&config).unwrap(),
        Some(("EngineTestForCausalLM".to_string(), renamed()))
    );
    let config = json!({"architectures": ["OtherForCausalLM"], "model_type": "engine_test_type"});
    assert_eq!(
        checkpoint_conversion_mapping_for(&config).unwrap(),
        Some(("engine_test_type".to_string(), fused()))
    );
    assert_eq!(
        checkpoint_conversion_mapping_for(&json!({"model_type": "nothing_here"})).unwrap(),
        None
    );
}

#[test]
fn invalid_converter_patterns_and_chains_are_refused_with_the_transform_named() {
    let cases: Vec<(WeightConverter, &str)> = vec![
        (
            WeightConverter::new(["q_proj|k_proj"], ["qk"], [Op::Concatenate { dim: 0 }]),
            "contains '|'",
        ),
        (
            WeightConverter::new(["experts.*.w"], ["experts.w"], []),
            "add MergeModulelist",
        ),
        (
            WeightConverter::new(["a"], ["b", "c"], [Op::Concatenate { dim: 0 }]),
            "1 tensors but there are 2 target",
        ),
        (
            WeightConverter::new(["a", "b"], ["c"], [Op::Chunk { dim: 0 }]),
            "needs exactly one tensor",
        ),
    ];
    for (c, expected) in cases {
        let err = Transform::from(c.clone())
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(err.contains("WeightConverter("), "{err}");
    }
    let e = Transform::from(WeightRenaming::new("(", "x"))
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("WeightRenaming(\"(\" -> \"x\"): invalid regex"),
        "{e}"
    );
}

#[test]
fn a_scope_that_would_change_a_conversion_already_run_is_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(
        tmp.path(),
        json!({}),
        vec![
            ("attn.q_proj.weight", ramp(&[2, 2], 0.0)),
            ("attn.k_proj.weight", ramp(&[2, 2], 1.0)),
            ("attn.v_proj.weight", ramp(&[2, 2], 2.0)),
        ],
    );
    let (_, w) = load(tmp.path(), fused());
    w.get((6, 2), "attn.qkv_proj.weight").unwrap();
    let late = vec![
        WeightConverter::new(
            ["q_proj", "k_proj"],
            ["qk_proj"],
            [Op::Concatenate { dim: 0 }],
        )
        .into(),
    ];
    w.pp("attn")
        .with_transforms("LateFused", late)
        .get((4, 2), "qk_proj.weight")
        .unwrap();
    let p = problems(w.finish().unwrap_err());
    assert!(
        matches!(&p[0], Problem::Conflict { detail } if detail.contains("already produced") && detail.contains("LateFused")),
        "{p:?}"
    );
}

#[test]
fn renamings_and_report_counts() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(
        tmp.path(),
        json!({}),
        vec![
            ("transformer.h.0.w", ramp(&[2], 0.0)),
            ("transformer.h.1.w", ramp(&[2], 0.0)),
            ("lm_head.weight", ramp(&[2], 0.0)),
        ],
    );
    let (source, w) = load(
        tmp.path(),
        vec![WeightRenaming::new(r"^transformer\.h\.", "model.layers.").into()],
    );
    for n in ["model.layers.0.w", "model.layers.1.w", "lm_head.weight"] {
        w.get(2, n).unwrap();
    }
    w.finish().unwrap();
    let report = source.report();
    assert_eq!(report.tensors_served, 3);
    assert_eq!(report.bytes_read, 3 * 2 * 4);
    assert_eq!(report.transforms.len(), 1);
    assert_eq!(report.transforms[0].count, 2);
    assert!(
        report.to_string().contains(
            "WeightRenaming(\"^transformer\\\\.h\\\\.\" -> \"model.layers.\") x2 (registry)"
        ),
        "{report}"
    );
}
