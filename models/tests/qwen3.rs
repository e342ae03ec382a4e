//! Qwen3 and Qwen3-MoE configs: what they lower to (the reference checkpoints check the
//! numbers in the parity suite).

use std::sync::Arc;

use patchwork_models::decoder::{AttentionKind, FeedForwardKind, RopeScaling};
use patchwork_models::qwen3::Qwen3Config;
use patchwork_models::qwen3_moe::Qwen3MoeConfig;
use patchwork_models::{AutoModelForCausalLM, LoadOptions};

fn qwen3(edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut c = serde_json::json!({
        "model_type": "qwen3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 256, "rope_theta": 1000000.0,
    });
    edit(&mut c);
    c
}

fn lower3(
    c: &serde_json::Value,
) -> patchwork_models::Result<patchwork_models::decoder::DecoderConfig> {
    Qwen3Config::from_json(c, "config.json")?.decoder_config(Arc::new(c.clone()), "config.json")
}

#[test]
fn qwen3_has_head_norms_an_independent_head_dim_and_attention_biases() {
    let c = lower3(&qwen3(|_| {})).unwrap();
    assert!(c.qk_norm);
    assert_eq!((c.head_dim, c.hidden_size / c.num_attention_heads), (16, 8));
    assert!(!c.qkv_bias && !c.o_proj_bias && !c.mlp_bias);
    let c = lower3(&qwen3(|c| c["attention_bias"] = true.into())).unwrap();
    assert!(c.qkv_bias && c.o_proj_bias && !c.mlp_bias);
    // q_norm and k_norm are Qwen3RMSNorm sites over head_dim.
    let model = AutoModelForCausalLM::from_config(&qwen3(|_| {}), &LoadOptions::default()).unwrap();
    for head_norm in ["q_norm", "k_norm"] {
        let path = format!("model.layers.1.self_attn.{head_norm}");
        let built = model.report().at(&path).unwrap_or_else(|| panic!("{path}"));
        assert_eq!(built.site, "Qwen3RMSNorm");
        let w = model
            .weights()
            .params()
            .get(&format!("{path}.weight"))
            .unwrap();
        assert_eq!(w.dims(), &[16]);
    }
}

#[test]
fn qwen3_yarn_reads_both_spellings_as_transformers_v5_does() {
    let old = lower3(&qwen3(|c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 64});
    }))
    .unwrap();
    let new = lower3(&qwen3(|c| {
        c["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0,
            "rope_theta": 1000000.0, "original_max_position_embeddings": 64});
    }))
    .unwrap();
    assert_eq!(old.rope, new.rope);
    match old.rope.scaling {
        // The factor is the config's (v5), not max_position_embeddings / original (256 / 64).
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            ..
        } => assert_eq!((factor, original_max_position_embeddings), (4.0, 64)),
        other => panic!("{other:?}"),
    }
    // No factor: the ratio.
    let ratio = lower3(&qwen3(|c| {
        c["rope_scaling"] =
            serde_json::json!({"rope_type": "yarn", "original_max_position_embeddings": 64});
    }))
    .unwrap();
    assert!(matches!(ratio.rope.scaling, RopeScaling::Yarn { factor, .. } if factor == 4.0));
    let err = lower3(&qwen3(|c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "longrope", "factor": 4.0});
    }))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("rope_scaling.rope_type") && err.contains("longrope"),
        "{err}"
    );
}

#[test]
fn qwen3_slides_from_max_window_layers_when_enabled() {
    let c = lower3(&qwen3(|c| {
        c["use_sliding_window"] = true.into();
        c["sliding_window"] = 8.into();
        c["max_window_layers"] = 1.into();
    }))
    .unwrap();
    let w = AttentionKind::Sliding { window: 8 };
    assert_eq!(c.layer_types, [AttentionKind::Full, w, w]);
    let c = lower3(&qwen3(|c| c["sliding_window"] = 8.into())).unwrap();
    assert!(
        !c.has_sliding_layers(),
        "use_sliding_window false: no window"
    );
}

fn qwen3_moe(edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut c = qwen3(|_| {});
    c["model_type"] = "qwen3_moe".into();
    c["num_experts"] = 8.into();
    c["num_experts_per_tok"] = 2.into();
    c["moe_intermediate_size"] = 16.into();
    edit(&mut c);
    c
}

fn lower3moe(
    c: &serde_json::Value,
) -> patchwork_models::Result<patchwork_models::decoder::DecoderConfig> {
    Qwen3MoeConfig::from_json(c, "config.json")?.decoder_config(Arc::new(c.clone()), "config.json")
}

#[test]
fn qwen3_moe_has_no_shared_expert_and_honours_sparse_steps_dense_layers_and_norm_topk() {
    let c = lower3moe(&qwen3_moe(|c| {
        c["decoder_sparse_step"] = 1.into();
        c["mlp_only_layers"] = serde_json::json!([1]);
        c["norm_topk_prob"] = true.into();
    }))
    .unwrap();
    use FeedForwardKind::{Dense, Sparse};
    assert_eq!(c.feed_forward, [Sparse, Dense, Sparse]);
    let moe = c.moe.as_ref().unwrap();
    assert_eq!(moe.shared_expert_intermediate_size, 0);
    assert!(moe.norm_topk_prob && c.qk_norm);
    let c = lower3moe(&qwen3_moe(|c| c["decoder_sparse_step"] = 3.into())).unwrap();
    assert_eq!(c.feed_forward, [Dense, Dense, Sparse]);
    // With a sliding window every layer slides, as transformers' Qwen3-MoE does
    // (max_window_layers is published but not read upstream).
    let c = lower3moe(&qwen3_moe(|c| {
        c["use_sliding_window"] = true.into();
        c["sliding_window"] = 8.into();
        c["max_window_layers"] = 2.into();
    }))
    .unwrap();
    assert_eq!(c.layer_types, [AttentionKind::Sliding { window: 8 }; 3]);
    let model =
        AutoModelForCausalLM::from_config(&qwen3_moe(|_| {}), &LoadOptions::default()).unwrap();
    assert!(
        model
            .report()
            .at("model.layers.0.mlp.shared_expert")
            .is_none()
    );
    assert_eq!(
        model.report().at("model.layers.0.mlp.gate").unwrap().site,
        "Qwen3MoeTopKRouter"
    );
}

#[test]
fn bad_qwen3_moe_values_are_errors_naming_the_key() {
    for (key, value, expect) in [
        (
            "num_experts_per_tok",
            serde_json::json!(9),
            "num_experts_per_tok",
        ),
        ("mlp_only_layers", serde_json::json!([7]), "mlp_only_layers"),
        (
            "mlp_only_layers",
            serde_json::json!(["a"]),
            "mlp_only_layers",
        ),
        ("head_dim", serde_json::json!(15), "head_dim"),
        (
            "router_aux_loss_coef",
            serde_json::json!("x"),
            "router_aux_loss_coef",
        ),
        (
            "use_sliding_window",
            serde_json::json!(true),
            "sliding_window",
        ),
    ] {
        let c = qwen3_moe(|c| {
            c[key] = value.clone();
            if key == "use_sliding_window" {
                c["sliding_window"] = serde_json::Value::Null;
            }
        });
        let err = lower3moe(&c).unwrap_err().to_string();
        assert!(
            err.contains(expect) && err.contains("config.json"),
            "{key}: {err}"
        );
    }
}
