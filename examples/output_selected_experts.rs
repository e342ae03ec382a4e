//! The upstream page's "expose `output_selected_experts`" step, in Rust, on Qwen3-MoE: record
//! the experts every token went to with a recorder on the router sites, then replay them.
//!
//! Upstream adds an `OutputRecorder(ReplayableQwen3MoeTopKRouter, index=2)` to a class-level
//! registry, which patching rewrites for good. Here the recorder is part of the forward call
//! (`ForwardOptions::recorders`): it names the site, so it records whichever router type was
//! built there (the original, or a replacement), and nothing outlives the call.
//!
//! `cargo run --release --example output_selected_experts` (runs on the embedded
//! qwen3-moe-tiny).

use std::path::Path;

use candle_core::{Device, Tensor};
use patch_core::{Build, Builder, PatchSet, Replacement};
use patchwork_models::decoder::{LayerContext, MoeArgs, Recorders, Router, RouterOutput};
use patchwork_models::qwen3_moe::Qwen3MoeTopKRouter;
use patchwork_models::routing::experts_from_records;
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};

/// A router that has moved on (as training moves it): it routes a perturbed input, and still
/// honours forced experts, as the original does.
pub struct MovedRouter(Qwen3MoeTopKRouter);

impl Build for MovedRouter {
    type Slot = dyn Router;
    fn build(b: &Builder, args: MoeArgs<'_>) -> patch_core::Result<Box<dyn Router>> {
        Ok(Box::new(Self(Qwen3MoeTopKRouter::new(b, args)?)))
    }
}

impl Router for MovedRouter {
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput> {
        self.0.forward(&(x.sqr()? - x)?, ctx)
    }
}

type Error = Box<dyn std::error::Error>;

/// The experts of every router, by layer, `[token][k]`.
fn selected(
    model: &CausalLM,
    input: &Tensor,
    options: ForwardOptions,
) -> Result<Vec<Vec<Vec<u32>>>, Error> {
    let options = ForwardOptions {
        // transformers' `output_selected_experts=True`: a recorder on the router sites.
        recorders: Recorders::sites(["Qwen3MoeTopKRouter"])?,
        ..options
    };
    let out = model.forward_with(input, None, None, &options)?;
    experts_from_records(&out.records)?
        .values()
        .map(|ids| Ok(ids.to_dtype(candle_core::DType::U32)?.to_vec2()?))
        .collect()
}

fn main() -> Result<(), Error> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen3-moe-tiny");
    let input = Tensor::new(&[[66u32, 221, 47, 234, 117, 102, 13, 226]], &Device::Cpu)?;
    let plain = AutoModelForCausalLM::from_pretrained(
        &dir,
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )?;

    // Record: one pass with the router sites recorded.
    let options = ForwardOptions {
        recorders: Recorders::sites(["Qwen3MoeTopKRouter"])?,
        ..ForwardOptions::default()
    };
    let out = plain.forward_with(&input, None, None, &options)?;
    let recorded = experts_from_records(&out.records)?;
    println!(
        "recorded the routers at {:?}",
        out.records
            .iter()
            .map(|r| r.path.as_str())
            .collect::<Vec<_>>()
    );

    // The same recorder on a model whose router was replaced: it records the replacement, with
    // nothing re-registered.
    let moved = AutoModelForCausalLM::from_pretrained(
        &dir,
        &LoadOptions::default().with_patches(PatchSet::from_mapping([(
            "Qwen3MoeTopKRouter",
            Replacement::of::<MovedRouter>(),
        )])?),
    )?;
    let before = selected(&plain, &input, ForwardOptions::default())?;
    let free = selected(&moved, &input, ForwardOptions::default())?;
    let replayed = selected(
        &moved,
        &input,
        ForwardOptions {
            forced_experts: recorded,
            ..ForwardOptions::default()
        },
    )?;
    println!("layer 0, recorded:           {:?}", before[0]);
    println!("layer 0, moved router, free: {:?}", free[0]);
    println!("layer 0, moved router, replayed: {:?}", replayed[0]);
    if replayed != before {
        return Err("the replay did not keep the recorded experts".into());
    }
    if free == before {
        return Err("the moved router routes as the original: the example shows nothing".into());
    }
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
