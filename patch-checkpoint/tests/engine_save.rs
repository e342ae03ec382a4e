//! The checkpoint engine end to end: saving through the reverse transforms: renamed keys, a model built from a config, half precision, refused and wrong destinations.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use patch_checkpoint::{
    Checkpoint, ConversionRegistry, Op, RandomInit, SaveOptions, Transform, WeightConverter,
    WeightRenaming, Weights, mappings, resave, save_pretrained,
};
use serde_json::json;

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
