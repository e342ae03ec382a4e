//! The upstream page's "record and replay MoE routing" pattern, in Rust, on Qwen3-MoE (the
//! family the page writes it for, `Qwen3MoeTopKRouter`): record
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
//! `cargo run --release --example routing_replay` (runs on the embedded qwen3-moe-tiny).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use patch_core::{Build, Builder, PatchSet, Replacement};
use patchwork_models::decoder::{LayerContext, MoeArgs, Router, RouterOutput};
use patchwork_models::qwen3_moe::Qwen3MoeTopKRouter;
use patchwork_models::routing::{experts_from_vllm, recorded_experts};
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};

/// A router whose decisions drift from the recorded ones, as a router does while training
/// updates its weights: it routes a rescaled copy of its input. It wraps the original, which
/// honours forced experts (recomputing their scores from its current logits).
pub struct DriftedRouter(Qwen3MoeTopKRouter);

impl Build for DriftedRouter {
    type Slot = dyn Router;
    fn build(b: &Builder, args: MoeArgs<'_>) -> patch_core::Result<Box<dyn Router>> {
        Ok(Box::new(Self(Qwen3MoeTopKRouter::new(b, args)?)))
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
        output_router_logits: Some(true),
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen3-moe-tiny");
    let input = Tensor::new(&[[66u32, 221, 47, 234, 117, 102, 13, 226]], &Device::Cpu)?;

    // Record: the experts the original router chooses.
    let model = AutoModelForCausalLM::from_pretrained(
        &dir,
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )?;
    let options = ForwardOptions {
        output_router_logits: Some(true),
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
            "Qwen3MoeTopKRouter",
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

    // The same with a layer axis over every decoder layer (the dense layer's entries unused).
    let layers = drifted.config().num_hidden_layers;
    let top_k = drifted.config().moe()?.num_experts_per_tok;
    let all: Vec<Tensor> = (0..layers)
        .map(|l| match recorded.get(&l) {
            Some(ids) => ids.to_dtype(candle_core::DType::I64)?.unsqueeze(1),
            None => Tensor::zeros(
                (input.dim(1)?, 1, top_k),
                candle_core::DType::I64,
                &Device::Cpu,
            ),
        })
        .collect::<candle_core::Result<_>>()?;
    let all_layers = Tensor::cat(&all, 1)?;
    assert_eq!(
        route(
            &drifted,
            &input,
            experts_from_vllm(&all_layers, drifted.config())?
        )?,
        recorded_ids
    );
    println!(
        "replayed from an all-layers axis [{:?}]: same experts",
        all_layers.dims()
    );

    // Partial replay: the first half of the tokens replayed, the rest (-1) routed freely.
    let half = input.dim(1)? / 2;
    let partial: BTreeMap<usize, Tensor> = recorded
        .iter()
        .map(|(&l, ids)| {
            let ids = ids.to_dtype(candle_core::DType::I64)?;
            let free = Tensor::full(-1i64, (ids.dim(0)? - half, ids.dim(1)?), &Device::Cpu)?;
            Ok((l, Tensor::cat(&[&ids.narrow(0, 0, half)?, &free], 0)?))
        })
        .collect::<candle_core::Result<_>>()?;
    let mixed = route(&drifted, &input, partial)?;
    for (l, rows) in &mixed {
        assert_eq!(rows[..half], recorded_ids[l][..half], "replayed half");
    }
    // The first MoE layer's input does not depend on any routing: its free half is exactly
    // what the drifted router chooses unforced (deeper layers see the replayed half's outputs).
    let first = moe_layers[0];
    assert_eq!(mixed[&first][half..], free[&first][half..], "free half");
    println!("partial replay: tokens 0..{half} replayed, the rest routed by the drifted router");
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
