//! The Qwen2-MoE family beyond parity: router recording that survives replacements, routing
//! replay, one attention replacement serving two families, per-expert keys on save.

mod common;

use patch_core::ModuleExt;
use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use common::qwen2_moe::*;
use common::{check_close, fixtures_dir, ids};
use patch_core::{Build, Builder, Module, PatchSet, Replacement};
use patchwork_models::decoder::{
    Attention, AttentionArgs, LayerContext, MoeArgs, MoeOutput, Router, RouterOutput, SparseMoe,
};
use patchwork_models::llama::{LlamaAttention, LlamaDecoderLayer};
use patchwork_models::qwen2_moe::{
    Qwen2MoeAttention, Qwen2MoeDecoderLayer, Qwen2MoeSparseMoeBlock, Qwen2MoeTopKRouter,
};
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};

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
