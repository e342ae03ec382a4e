//! The Qwen2-MoE family beyond parity: config rules, sliding windows, grouped expert
//! dispatch.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::check_close;
use common::qwen2_moe::*;
use patch_core::{Builder, PatchSet};
use patchwork_models::ForwardOptions;
use patchwork_models::decoder::{AttentionKind, FeedForwardKind, MoeArgs, StackedExperts};

#[test]
fn sparse_layers_and_sliding_windows_follow_the_config() {
    let c = decoder_config(&small(|_| {})).unwrap();
    use FeedForwardKind::{Dense, Sparse};
    assert_eq!(c.feed_forward, vec![Sparse, Dense, Sparse]);
    assert_eq!(c.layer_types, vec![AttentionKind::Full; 3]);
    assert!(c.qkv_bias && !c.o_proj_bias);
    let c = decoder_config(&small(|c| c["decoder_sparse_step"] = 2.into())).unwrap();
    assert_eq!(c.feed_forward, vec![Dense, Dense, Dense]);
    // A window is used only when use_sliding_window is true.
    let c = decoder_config(&small(|c| {
        c["sliding_window"] = 4.into();
        c["max_window_layers"] = 1.into();
    }))
    .unwrap();
    assert!(!c.has_sliding_layers());
    let c = decoder_config(&small(|c| {
        c["sliding_window"] = 4.into();
        c["max_window_layers"] = 1.into();
        c["use_sliding_window"] = true.into();
    }))
    .unwrap();
    let w = AttentionKind::Sliding { window: 4 };
    assert_eq!(c.layer_types, vec![AttentionKind::Full, w, w]);
    let c = decoder_config(&small(|c| {
        c["sliding_window"] = 4.into();
        c["use_sliding_window"] = true.into();
        c["layer_types"] =
            serde_json::json!(["sliding_attention", "full_attention", "sliding_attention"]);
    }))
    .unwrap();
    assert_eq!(c.layer_types, vec![w, AttentionKind::Full, w]);
}

#[test]
fn bad_moe_config_values_are_errors_naming_the_key() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "mlp_only_layers",
            Box::new(|c| c["mlp_only_layers"] = serde_json::json!([7])),
        ),
        (
            "num_experts_per_tok",
            Box::new(|c| c["num_experts_per_tok"] = 9.into()),
        ),
        (
            "decoder_sparse_step",
            Box::new(|c| c["decoder_sparse_step"] = 0.into()),
        ),
        (
            "sliding_window",
            Box::new(|c| {
                c["use_sliding_window"] = true.into();
                c["sliding_window"] = serde_json::Value::Null;
            }),
        ),
        (
            "layer_types[1]",
            Box::new(|c| {
                c["layer_types"] =
                    serde_json::json!(["full_attention", "chunked", "full_attention"]);
            }),
        ),
        ("qkv_bias", Box::new(|c| c["qkv_bias"] = "yes".into())),
    ];
    for (key, edit) in cases {
        let err = decoder_config(&small(|c| edit(c))).unwrap_err();
        assert!(err.contains(key), "{key}: {err}");
    }
}

/// Each token through its experts one at a time, summed with its weights: the dense
/// definition the grouped dispatch must reproduce.
#[test]
fn grouped_expert_dispatch_matches_the_per_token_definition() {
    let config = decoder_config(&small(|_| {})).unwrap();
    let weights = patch_core::checkpoint::Weights::new(
        patch_core::checkpoint::RandomInit::new(1, 0.3),
        DType::F32,
        &Device::Cpu,
    );
    let experts = StackedExperts::load(
        &Builder::new(weights),
        MoeArgs {
            config: &config,
            layer_idx: 0,
        },
    )
    .unwrap();
    let x = Tensor::randn(0f32, 1.0, (5, 32), &Device::Cpu).unwrap();
    let idx = Tensor::new(&[[0u32, 3], [3, 5], [1, 0], [5, 4], [3, 2]], &Device::Cpu).unwrap();
    let w = Tensor::new(
        &[
            [0.7f32, 0.3],
            [0.5, 0.5],
            [0.9, 0.1],
            [0.2, 0.8],
            [0.6, 0.4],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let ours = experts
        .forward(
            &x,
            &idx,
            &w,
            &patchwork_models::decoder::PassContext::default(),
        )
        .unwrap();
    let mut rows = Vec::new();
    for t in 0..5 {
        let xt = x.i(t..t + 1).unwrap();
        let mut acc = Tensor::zeros((1, 32), DType::F32, &Device::Cpu).unwrap();
        for k in 0..2 {
            let e = idx.i((t, k)).unwrap().to_scalar::<u32>().unwrap() as usize;
            let gu = experts.gate_up_proj.i(e).unwrap();
            let gate =
                candle_nn::ops::silu(&xt.matmul(&gu.i(0..16).unwrap().t().unwrap()).unwrap())
                    .unwrap();
            let up = xt.matmul(&gu.i(16..32).unwrap().t().unwrap()).unwrap();
            let y = (gate * up)
                .unwrap()
                .matmul(&experts.down_proj.i(e).unwrap().t().unwrap())
                .unwrap();
            acc = (acc + (y * w.i((t, k)).unwrap().to_scalar::<f32>().unwrap() as f64).unwrap())
                .unwrap();
        }
        rows.push(acc);
    }
    check_close(
        "grouped experts",
        &ours,
        &Tensor::cat(&rows, 0).unwrap(),
        None,
    )
    .unwrap();
}

#[test]
fn a_sliding_window_limits_what_a_token_sees_and_the_cache_path_agrees() {
    // One sparse layer, window 3: the last position's logits only depend on the last 3 tokens.
    let config = small(|c| {
        c["num_hidden_layers"] = 1.into();
        c["mlp_only_layers"] = serde_json::json!([]);
        c["use_sliding_window"] = true.into();
        c["sliding_window"] = 3.into();
        c["max_window_layers"] = 0.into();
    });
    let m = model(&config, PatchSet::empty());
    let x = tokens(8);
    let full = m.forward(&x, None).unwrap();
    let tail = m.forward(&x.narrow(1, 5, 3).unwrap(), None).unwrap();
    check_close(
        "windowed",
        &full.narrow(1, 7, 1).unwrap(),
        &tail.narrow(1, 2, 1).unwrap(),
        None,
    )
    .unwrap();
    let unwindowed = model(
        &small(|c| {
            c["num_hidden_layers"] = 1.into();
            c["mlp_only_layers"] = serde_json::json!([]);
        }),
        PatchSet::empty(),
    );
    let wide = unwindowed.forward(&x, None).unwrap();
    assert!(
        check_close(
            "no window",
            &wide.narrow(1, 7, 1).unwrap(),
            &full.narrow(1, 7, 1).unwrap(),
            None
        )
        .is_err()
    );
    // Decoding through the cache applies the same window.
    let mut cache = m.new_cache(1, 8).unwrap();
    let mut steps = vec![
        m.forward_with(
            &x.narrow(1, 0, 2).unwrap(),
            None,
            Some(&mut cache),
            &ForwardOptions::default(),
        )
        .unwrap()
        .logits
        .unwrap(),
    ];
    for t in 2..8 {
        steps.push(
            m.forward_with(
                &x.narrow(1, t, 1).unwrap(),
                None,
                Some(&mut cache),
                &ForwardOptions::default(),
            )
            .unwrap()
            .logits
            .unwrap(),
        );
    }
    check_close(
        "cached windowed",
        &Tensor::cat(&steps, 1).unwrap(),
        &full,
        None,
    )
    .unwrap();
}
