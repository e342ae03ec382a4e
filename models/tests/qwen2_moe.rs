//! The Qwen2-MoE family beyond parity: config rules, sliding windows, grouped expert
//! dispatch, router recording that survives replacements, routing replay, and one attention
//! replacement serving two families.

mod common;

use patch_core::ModuleExt;
use std::collections::BTreeMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::{check_close, fixtures_dir, ids};
use patch_core::{Build, Builder, Module, PatchSet, Replacement};
use patchwork_models::decoder::{
    Attention, AttentionArgs, AttentionKind, FeedForwardKind, LayerContext, MoeArgs, MoeOutput,
    Router, RouterOutput, SparseMoe, StackedExperts,
};
use patchwork_models::llama::{LlamaAttention, LlamaDecoderLayer};
use patchwork_models::qwen2_moe::{
    Qwen2MoeAttention, Qwen2MoeConfig, Qwen2MoeDecoderLayer, Qwen2MoeSparseMoeBlock,
    Qwen2MoeTopKRouter,
};
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};

fn small(edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut c = serde_json::json!({
        "model_type": "qwen2_moe", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24, "num_experts": 6,
        "num_experts_per_tok": 2, "mlp_only_layers": [1], "decoder_sparse_step": 1,
        "initializer_range": 0.2, "rope_theta": 10000.0, "eos_token_id": 2,
    });
    edit(&mut c);
    c
}

fn model(config: &serde_json::Value, patches: PatchSet) -> CausalLM {
    AutoModelForCausalLM::from_config(
        config,
        &LoadOptions::default().with_seed(5).with_patches(patches),
    )
    .unwrap()
}

fn tokens(n: usize) -> Tensor {
    let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % 64).collect();
    Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap()
}

fn decoder_config(
    config: &serde_json::Value,
) -> Result<patchwork_models::decoder::DecoderConfig, String> {
    let typed = Qwen2MoeConfig::from_json(config, "config.json").map_err(|e| e.to_string())?;
    typed
        .decoder_config(std::sync::Arc::new(config.clone()), "config.json")
        .map_err(|e| e.to_string())
}

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

fn record(
    m: &CausalLM,
    x: &Tensor,
    forced: BTreeMap<usize, Tensor>,
) -> (Tensor, Vec<(usize, Tensor, Tensor)>) {
    let opts = ForwardOptions {
        output_router_logits: Some(true),
        forced_experts: forced,
        ..ForwardOptions::default()
    };
    let out = m.forward_with(x, None, None, &opts).unwrap();
    let routes = out
        .router_logits
        .into_iter()
        .map(|r| (r.layer, r.router.logits, r.router.indices))
        .collect();
    (out.logits.unwrap(), routes)
}

#[test]
fn recorded_routing_replays_exactly_and_forcing_other_experts_changes_it() {
    let m = model(&small(|_| {}), PatchSet::empty());
    let x = tokens(6);
    let (logits, routes) = record(&m, &x, BTreeMap::new());
    assert_eq!(
        routes.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![0, 2],
        "only the sparse layers record"
    );
    let replay: BTreeMap<usize, Tensor> = routes.iter().map(|(l, _, i)| (*l, i.clone())).collect();
    let (replayed, again) = record(&m, &x, replay);
    check_close("replayed logits", &replayed, &logits, None).unwrap();
    assert_eq!(ids(&again[0].2), ids(&routes[0].2));
    // Force layer 0 to other experts: its recorded choice is the forced one, the logits move.
    let other: Vec<u32> = ids(&routes[0].2)
        .iter()
        .map(|&e| ((e + 1) % 6) as u32)
        .collect();
    let other = Tensor::from_vec(other, routes[0].2.shape(), &Device::Cpu).unwrap();
    let (moved, forced) = record(&m, &x, BTreeMap::from([(0, other.clone())]));
    assert_eq!(ids(&forced[0].2), ids(&other));
    assert!(check_close("forced", &moved, &logits, None).is_err());
    // A forced routing of the wrong shape is an error, not a panic.
    let opts = ForwardOptions {
        forced_experts: BTreeMap::from([(
            0,
            Tensor::zeros((2, 2), DType::U32, &Device::Cpu).unwrap(),
        )]),
        ..ForwardOptions::default()
    };
    let e = m
        .forward_with(&x, None, None, &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("forced_experts[0]: shape [2, 2]: this pass routes 6 tokens to 2 experts each"),
        "{e}"
    );
}

/// A router replacement that delegates (the upstream page's replayable-router pattern).
struct WrappedRouter(Box<dyn Router>);
impl Build for WrappedRouter {
    type Slot = dyn Router;
    fn build(b: &Builder, args: MoeArgs<'_>) -> patch_core::Result<Box<dyn Router>> {
        Ok(Box::new(Self(Qwen2MoeTopKRouter::build(b, args)?)))
    }
}
impl Router for WrappedRouter {
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput> {
        self.0.forward(x, ctx)
    }
}

/// A sparse block replacement that delegates.
struct WrappedBlock(Box<dyn SparseMoe>);
impl Build for WrappedBlock {
    type Slot = dyn SparseMoe;
    fn build(b: &Builder, args: MoeArgs<'_>) -> patch_core::Result<Box<dyn SparseMoe>> {
        Ok(Box::new(Self(Qwen2MoeSparseMoeBlock::build(b, args)?)))
    }
}
impl SparseMoe for WrappedBlock {
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<MoeOutput> {
        self.0.forward(x, ctx)
    }
}

#[test]
fn router_outputs_are_recorded_when_the_router_or_the_block_is_replaced() {
    let config = small(|_| {});
    let x = tokens(5);
    let (logits, routes) = record(&model(&config, PatchSet::empty()), &x, BTreeMap::new());
    for patches in [
        PatchSet::from_mapping([("Qwen2MoeTopKRouter", Replacement::of::<WrappedRouter>())])
            .unwrap(),
        PatchSet::from_mapping([("Qwen2MoeSparseMoeBlock", Replacement::of::<WrappedBlock>())])
            .unwrap(),
    ] {
        let m = model(&config, patches);
        assert_eq!(m.report().patched(), 2);
        let (l, r) = record(&m, &x, BTreeMap::new());
        check_close("patched logits", &l, &logits, None).unwrap();
        assert_eq!(r.len(), routes.len());
        for (a, b) in r.iter().zip(&routes) {
            assert_eq!(a.0, b.0);
            check_close("router logits", &a.1, &b.1, None).unwrap();
            assert_eq!(ids(&a.2), ids(&b.2));
        }
    }
}

/// One attention replacement for every family: delegates to whichever original the site is.
struct AnyAttention(Box<dyn Attention>);
impl Build for AnyAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> patch_core::Result<Box<dyn Attention>> {
        let original = match args.config.model_type.as_str() {
            "qwen2_moe" => Qwen2MoeAttention::build(b, args)?,
            _ => LlamaAttention::build(b, args)?,
        };
        Ok(Box::new(Self(original)))
    }
}
impl Attention for AnyAttention {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        self.0.forward(x, ctx)
    }
}

fn first_attention<
    L: 'static + std::ops::Deref<Target = patchwork_models::decoder::PreNormLayer>,
>(
    m: &CausalLM,
) -> &dyn Module {
    let layer: &dyn Module = &*m.model.layers[0];
    &*layer.downcast_ref::<L>().unwrap().self_attn
}

#[test]
fn one_attention_pattern_patches_both_families_and_explain_shows_the_skipped_matches() {
    let patches =
        PatchSet::from_mapping([(".*Attention", Replacement::of::<AnyAttention>())]).unwrap();
    let options = LoadOptions::default().with_patches(patches.clone());
    let llama =
        AutoModelForCausalLM::from_pretrained(fixtures_dir().join("llama-tiny"), &options).unwrap();
    let qwen = model(&small(|_| {}), patches);
    assert!(first_attention::<LlamaDecoderLayer>(&llama).is::<AnyAttention>());
    assert!(first_attention::<Qwen2MoeDecoderLayer>(&qwen).is::<AnyAttention>());
    let plain = AutoModelForCausalLM::from_pretrained(
        fixtures_dir().join("llama-tiny"),
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )
    .unwrap();
    let x = tokens(4);
    check_close(
        "patched llama",
        &llama.forward(&x, None).unwrap(),
        &plain.forward(&x, None).unwrap(),
        None,
    )
    .unwrap();

    // A pattern matching every site of both families applies to the attention sites only;
    // explain lists every other match as skipped, with the reason.
    let broad =
        PatchSet::from_mapping([("^(Llama|Qwen2Moe)", Replacement::of::<AnyAttention>())]).unwrap();
    let qwen = model(&small(|_| {}), broad.clone());
    assert_eq!(qwen.report().patched(), 3, "one attention per layer");
    let text = qwen.explain().to_string();
    for site in [
        "Qwen2MoeRMSNorm",
        "Qwen2MoeMLP",
        "Qwen2MoeExperts",
        "Qwen2MoeTopKRouter",
        "Qwen2MoeSparseMoeBlock",
        "Qwen2MoeDecoderLayer",
        "Qwen2MoeRotaryEmbedding",
    ] {
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with(site))
            .unwrap_or_else(|| panic!("{site} in\n{text}"));
        let next = text.lines().nth(line + 1).unwrap();
        assert!(
            next.contains("skipped") && next.contains("replacement fills slot Attention"),
            "{site}: {next}\n{text}"
        );
    }
    let llama_text = AutoModelForCausalLM::explain("llama").unwrap().to_string();
    assert!(llama_text.contains("LlamaAttention"), "{llama_text}");
}

#[test]
fn a_model_from_config_saves_per_expert_keys_and_reloads_identically() {
    let m = model(&small(|_| {}), PatchSet::empty());
    let dir = tempfile::tempdir().unwrap();
    m.save_pretrained(dir.path(), &patch_core::checkpoint::SaveOptions::default())
        .unwrap();
    let keys: Vec<String> = patch_core::checkpoint::Checkpoint::open(dir.path())
        .unwrap()
        .tensors()
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert!(
        keys.contains(&"model.layers.2.mlp.experts.5.up_proj.weight".to_string()),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.contains("gate_up_proj")), "{keys:?}");
    let again = AutoModelForCausalLM::from_pretrained(
        dir.path(),
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )
    .unwrap();
    let x = tokens(7);
    let (a, b) = (
        m.forward(&x, None).unwrap(),
        again.forward(&x, None).unwrap(),
    );
    // Same f32 weights, same computation: bit-identical logits.
    let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(a), flat(b));
}
