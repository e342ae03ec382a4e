//! The checkpoint engine end to end: strict accounting: every problem listed with its transform chain, missing and incomplete tensors, cached chunks, tied heads, renaming conflicts.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device};
use common::*;
use patch_checkpoint::{
    Checkpoint, Op, Problem, SaveOptions, WeightConverter, WeightRenaming, Weights, mappings,
    save_pretrained,
};
use serde_json::json;

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
