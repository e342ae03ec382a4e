//! The upstream page's RL training step, in Rust, on Qwen2-MoE: generate with the routing
//! recorded (as a rollout engine would return it), then train on the generated sequence with
//! that routing replayed, so the training pass sends every token to the experts that produced
//! it while the gradients still reach the router.
//!
//! 1. Load the model trainable (`LoadOptions::trainable()`: every parameter a candle `Var`).
//! 2. `generate` with `output_routed_experts`: per token, the experts of every MoE layer, in
//!    vLLM's `routed_experts` layout (the last token, never run, is -1: it routes freely).
//! 3. A few AdamW steps on the completion's loss (prompt labels -100) under the replayed
//!    routing: the loss falls, the router weights change, the replayed experts stay.
//! 4. `save_pretrained` the trained weights in the checkpoint's own layout (per-expert keys)
//!    and reload them to the same logits.
//!
//! `cargo run --release --example rl_replay_training` (runs on the embedded qwen2-moe-tiny).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use patch_core::PatchSet;
use patch_core::checkpoint::SaveOptions;
use patchwork_models::routing::experts_from_vllm;
use patchwork_models::{AutoModelForCausalLM, ForwardOptions, GenerationConfig, LoadOptions};
use patchwork_testing::{Tolerance, check_close, max_abs_diff};

type Error = Box<dyn std::error::Error>;

/// Expert ids of every layer, `[token][k]`.
fn routes(forced: &BTreeMap<usize, Tensor>) -> Result<BTreeMap<usize, Vec<Vec<i64>>>, Error> {
    forced
        .iter()
        .map(|(l, t)| Ok((*l, t.to_dtype(candle_core::DType::I64)?.to_vec2()?)))
        .collect()
}

/// A copy of the variable `name`'s current value.
fn value_of(vars: &candle_nn::VarMap, name: &str) -> Result<Tensor, Error> {
    let data = vars.data().lock().map_err(|_| "var map lock poisoned")?;
    let var = data
        .get(name)
        .ok_or_else(|| format!("no variable {name}"))?;
    Ok(var.as_tensor().copy()?)
}

/// Runs the example on the checkpoint `dir`; returns the losses of each step.
pub fn run(dir: &Path, steps: usize) -> Result<Vec<f32>, Error> {
    let options = LoadOptions::default()
        .with_patches(PatchSet::empty())
        .trainable();
    let model = AutoModelForCausalLM::from_pretrained(dir, &options)?;

    // 1. A rollout: generation with the routing recorded.
    let prompt = vec![1u32, 17, 42, 99, 7, 23];
    let config = GenerationConfig {
        output_routed_experts: true,
        ignore_eos: true,
        ..GenerationConfig::greedy(10)
    };
    let rollout = model.generate(std::slice::from_ref(&prompt), &config)?;
    let sequence = &rollout.sequences[0];
    let forced = experts_from_vllm(&rollout.routed_experts[0], model.config())?;
    println!(
        "rollout: {} tokens, routing recorded for MoE layers {:?}",
        sequence.len(),
        forced.keys().collect::<Vec<_>>()
    );

    // 2. Train on the completion only, under the replayed routing.
    let t = sequence.len();
    let input_ids = Tensor::from_vec(sequence.clone(), (1, t), &Device::Cpu)?;
    let labels: Vec<i64> = sequence
        .iter()
        .enumerate()
        .map(|(i, &id)| if i < prompt.len() { -100 } else { id as i64 })
        .collect();
    let labels = Tensor::from_vec(labels, (1, t), &Device::Cpu)?;
    let pass = ForwardOptions {
        labels: Some(labels),
        output_router_logits: Some(true),
        forced_experts: forced.clone(),
        ..ForwardOptions::default()
    };
    let vars = model.vars()?;
    let router_name = "model.layers.0.mlp.gate.weight";
    let router = value_of(vars, router_name)?;
    let mut optimizer = AdamW::new(
        vars.all_vars(),
        ParamsAdamW {
            lr: 5e-3,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let replayed = routes(&forced)?;
    let mut losses = Vec::with_capacity(steps);
    for step in 0..steps {
        let out = model.forward_with(&input_ids, None, None, &pass)?;
        let loss = out.loss.ok_or("no loss")?;
        // The replayed experts were used: every recorded choice, whatever the router says now.
        for record in &out.router_logits {
            let used: Vec<Vec<i64>> = record
                .router
                .indices
                .to_dtype(candle_core::DType::I64)?
                .to_vec2()?;
            for (token, (u, r)) in used.iter().zip(&replayed[&record.layer]).enumerate() {
                if r[0] >= 0 && u != r {
                    return Err(format!(
                        "step {step}, layer {}, token {token}: used {u:?}, replayed {r:?}",
                        record.layer
                    )
                    .into());
                }
            }
        }
        let value = loss.to_scalar::<f32>()?;
        println!(
            "step {step}: loss {value:.4} (aux {:.4})",
            out.aux_loss
                .map(|a| a.to_scalar::<f32>())
                .transpose()?
                .unwrap_or(0.0)
        );
        losses.push(value);
        optimizer.backward_step(&loss)?;
    }
    let moved = max_abs_diff(&value_of(vars, router_name)?, &router)?;
    println!("router weights of layer 0 moved by up to {moved:.2e}; replayed experts unchanged");
    if !(moved > 0.0 && moved.is_finite()) {
        return Err(format!("the router weights did not change as expected: {moved}").into());
    }

    // 3. Save the trained model in the checkpoint's own layout and reload it.
    let out_dir = std::env::temp_dir().join(format!("patchwork-rl-{}", std::process::id()));
    let saved = model.save_pretrained(&out_dir, &SaveOptions::default())?;
    let reloaded = AutoModelForCausalLM::from_pretrained(
        &out_dir,
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )?;
    let a = model.forward(&input_ids, None)?;
    let b = reloaded.forward(&input_ids, None)?;
    std::fs::remove_dir_all(&out_dir)?;
    let diff = check_close("reloaded logits", &b, &a, Tolerance::absolute(1e-4))?.max_abs_diff;
    println!(
        "saved {} tensors (per-expert keys) to {}; reloaded logits differ by {diff:.1e}",
        saved.tensors,
        out_dir.display()
    );
    Ok(losses)
}

fn main() -> Result<(), Error> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2-moe-tiny");
    let losses = run(&dir, 5)?;
    // At every step (a NaN loss fails this too).
    if !losses.windows(2).all(|w| w[1] < w[0]) {
        return Err(format!("the loss did not fall at every step: {losses:?}").into());
    }
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
