//! The upstream page's "record and replay MoE routing" pattern, in Rust, on Qwen2-MoE: record
//! which experts every token went to in one pass, then replay exactly that routing in a later
//! pass even though the router now decides differently (RL training: generation and the
//! training pass must use the same experts). Also: routing returned by vLLM
//! (`routed_experts`, `[seq_len, num_moe_layers, top_k]`), converted for replay.
//!
//! Upstream needs a router subclass holding forced indices as instance state, a context
//! manager to set and clear them, and an output-recorder registry entry. Here routing is a
//! forward output (`output_router_logits`) and replay a forward input (`forced_experts`):
//! no instance state, and it keeps working when the router is replaced.
//!
//! `cargo run --release --example routing_replay` (runs on the embedded qwen2-moe-tiny).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use patch_core::{Build, Builder, PatchSet, Replacement};
use patchwork_models::decoder::{LayerContext, MoeArgs, Router, RouterOutput};
use patchwork_models::qwen2_moe::Qwen2MoeTopKRouter;
use patchwork_models::routing::{experts_from_vllm, recorded_experts};
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};

/// A router whose decisions drift from the recorded ones, as a router does while training
/// updates its weights: it routes a rescaled copy of its input. It wraps the original, which
/// honours forced experts (recomputing their scores from its current logits).
pub struct DriftedRouter(Qwen2MoeTopKRouter);

impl Build for DriftedRouter {
    type Slot = dyn Router;
    fn build(b: &Builder, args: MoeArgs<'_>) -> patch_core::Result<Box<dyn Router>> {
        Ok(Box::new(Self(Qwen2MoeTopKRouter::new(b, args)?)))
    }
}

impl Router for DriftedRouter {
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput> {
        let drifted = (x.affine(-3.0, 0.0)? + x.sqr()?)?;
        self.0.forward(&drifted, ctx)
    }
}

/// Expert ids by layer, `[token][k]`.
type Routes = BTreeMap<usize, Vec<Vec<u32>>>;

/// One pass with routing recorded; returns its selected experts by layer.
fn route(
    model: &CausalLM,
    input: &Tensor,
    forced: BTreeMap<usize, Tensor>,
) -> Result<Routes, Box<dyn std::error::Error>> {
    let options = ForwardOptions {
        output_router_logits: true,
        forced_experts: forced,
        ..ForwardOptions::default()
    };
    let out = model.forward_with(input, None, None, &options)?;
    recorded_experts(&out.router_logits)
        .into_iter()
        .map(|(layer, ids)| Ok((layer, ids.to_vec2::<u32>()?)))
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2-moe-tiny");
    let input = Tensor::new(&[[66u32, 221, 47, 234, 117, 102, 13, 226]], &Device::Cpu)?;

    // Record: the experts the original router chooses.
    let model = AutoModelForCausalLM::from_pretrained(
        &dir,
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )?;
    let options = ForwardOptions {
        output_router_logits: true,
        ..ForwardOptions::default()
    };
    let recorded = recorded_experts(
        &model
            .forward_with(&input, None, None, &options)?
            .router_logits,
    );
    let recorded_ids = route(&model, &input, BTreeMap::new())?;
    println!("recorded experts, layer 0: {:?}", recorded_ids[&0]);

    // Later, the router decides differently.
    let drifted = AutoModelForCausalLM::from_pretrained(
        &dir,
        &LoadOptions::default().with_patches(PatchSet::from_mapping([(
            "Qwen2MoeTopKRouter",
            Replacement::of::<DriftedRouter>(),
        )])?),
    )?;
    let free = route(&drifted, &input, BTreeMap::new())?;
    println!("drifted router, free:      {:?}", free[&0]);
    // Replay: the recorded experts, whatever the router would choose now.
    let replayed = route(&drifted, &input, recorded.clone())?;
    println!("drifted router, replayed:  {:?}", replayed[&0]);
    assert_eq!(replayed, recorded_ids, "replay keeps the recorded experts");
    assert_ne!(
        free, recorded_ids,
        "the drifted router would route elsewhere"
    );

    // vLLM returns routed_experts as [seq_len, num_moe_layers, top_k]; convert and replay.
    let moe_layers: Vec<usize> = recorded.keys().copied().collect();
    let per_layer: Vec<Tensor> = moe_layers
        .iter()
        .map(|l| recorded[l].unsqueeze(1))
        .collect::<candle_core::Result<_>>()?;
    let routed_experts = Tensor::cat(&per_layer, 1)?.to_dtype(candle_core::DType::I64)?;
    let from_vllm = experts_from_vllm(&routed_experts, drifted.config())?;
    assert_eq!(route(&drifted, &input, from_vllm)?, recorded_ids);
    println!(
        "replayed from vLLM's layout [{:?}]: same experts",
        routed_experts.dims()
    );
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
