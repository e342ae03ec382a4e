//! The checkpoint engine end to end: the conversion registry: link-time and run-time mappings, invalid patterns and chains, scope conflicts, renaming counts.

mod common;

use common::*;
use patch_checkpoint::{Error, Op, Problem, Transform, WeightConverter, WeightRenaming};
use serde_json::json;

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
        text.contains("\"engine_test_default\"") && text.contains("engine_registry.rs"),
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
