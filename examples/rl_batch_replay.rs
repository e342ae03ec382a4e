//! RL at batch scale on Qwen3-MoE: two rollouts of different lengths, one returned as vLLM
//! returns it and one as SGLang does, padded into one training batch with their routing
//! aligned, the rollout-vs-trainer routing report, one AdamW step under the replayed routing,
//! and the report again.
//!
//! 1. Generate two rollouts with the routing recorded, then hand them over as the engines
//!    would: vLLM's `routed_experts` (`[P + C - 1, num_moe_layers, top_k]`: every token but the
//!    last) and SGLang's `meta_info.routed_experts` (base64 of int32 `[P + C - 1,
//!    num_hidden_layers, top_k]`, read from JSON with SGLang's field names).
//! 2. `RolloutBatch::from_rollouts`: right-padded `input_ids`, `attention_mask`, `labels`
//!    (-100 on prompts and padding) and `forced_experts` on the same positions.
//! 3. The report before training: the trainer's own router picks the rollout's experts.
//! 4. One AdamW step on the completions' loss under the rollout's routing.
//! 5. The report after: the router moved, so the trainer's own routing now differs from the
//!    rollout's in some tokens and layers, and the labels' log-probabilities with it.
//!
//! `cargo run --release --example rl_batch_replay` (runs on the embedded qwen3-moe-tiny).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use patch_core::PatchSet;
use patchwork_models::rollouts::{
    Padding, Rollout, RolloutBatch, RoutingReport, encode_sglang_routed_experts,
};
use patchwork_models::routing::moe_layers;
use patchwork_models::{AutoModelForCausalLM, GenerationConfig, LoadOptions};

type Error = Box<dyn std::error::Error>;

/// What the example measured.
pub struct Outcome {
    /// The report before the step.
    pub before: RoutingReport,
    /// The report after it.
    pub after: RoutingReport,
    /// The loss under the replayed routing, before and after the step.
    pub losses: [f32; 2],
}

/// Runs the example on the MoE checkpoint `dir`, with AdamW's learning rate `lr`.
pub fn run(dir: &Path, lr: f64) -> Result<Outcome, Error> {
    let options = LoadOptions::default()
        .with_patches(PatchSet::empty())
        .trainable();
    let model = AutoModelForCausalLM::from_pretrained(dir, &options)?;
    let config = model.config().clone();

    // 1. Two rollouts of different lengths: 3 + 7 and 5 + 3 tokens.
    let prompts = [vec![1u32, 17, 42], vec![5u32, 9, 77, 200, 31]];
    let mut rollouts = Vec::new();
    for (prompt, new) in prompts.iter().zip([7, 3]) {
        let generation = model.generate(
            std::slice::from_ref(prompt),
            &GenerationConfig {
                output_routed_experts: true,
                ignore_eos: true,
                ..GenerationConfig::greedy(new)
            },
        )?;
        let sequence = &generation.sequences[0];
        // `generate` returns a row for every token, the last one -1; the engines send every
        // token but the last.
        let recorded = &generation.routed_experts[0];
        let routed = recorded.narrow(0, 0, recorded.dim(0)? - 1)?;
        rollouts.push((prompt.clone(), sequence[prompt.len()..].to_vec(), routed));
    }
    let (prompt, completion, routed) = &rollouts[0];
    let from_vllm = Rollout::new(prompt, completion).with_routed_experts(routed.clone());
    let (prompt, completion, routed) = &rollouts[1];
    let from_sglang = Rollout::from_json(
        &sglang_response(prompt, completion, routed, &config)?,
        "the SGLang response",
        &config,
    )?;
    println!(
        "rollouts: {} tokens (vLLM's layout), {} tokens (SGLang's)",
        from_vllm.len(),
        from_sglang.len()
    );

    // 2. One padded batch, everything on the same positions.
    let batch =
        RolloutBatch::from_rollouts(&[from_vllm, from_sglang], &config, Padding::Right, None)?;
    println!("labels:\n{}", batch.labels);

    // 3. Before training: how far is the trainer's routing from the rollouts'?
    let before = batch.routing_report(&model)?;
    println!("before the step:\n{before}");

    // 4. One AdamW step under the replayed routing.
    let mut optimizer = AdamW::new(
        model.vars()?.all_vars(),
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let pass = batch.forward_options();
    let mask = Some(&batch.attention_mask);
    let loss = |model: &patchwork_models::CausalLM| -> Result<Tensor, Error> {
        let out = model.forward_with(&batch.input_ids, mask, None, &pass)?;
        Ok(out.loss.ok_or("no loss")?)
    };
    let first = loss(&model)?;
    optimizer.backward_step(&first)?;
    let second = loss(&model)?;
    let losses = [first.to_scalar::<f32>()?, second.to_scalar::<f32>()?];
    println!("loss under replay: {:.4} -> {:.4}", losses[0], losses[1]);

    // 5. After: the router moved away from the rollouts' routing.
    let after = batch.routing_report(&model)?;
    println!("after the step:\n{after}");
    Ok(Outcome {
        before,
        after,
        losses,
    })
}

/// What SGLang's `/generate` returns for a rollout, with the request's `input_ids`: the
/// routing as base64 int32 over every decoder layer (dense layers zero, as SGLang's buffer
/// leaves them) from `routed` (`[tokens, num_moe_layers, top_k]`).
fn sglang_response(
    prompt: &[u32],
    completion: &[u32],
    routed: &Tensor,
    config: &patchwork_models::decoder::DecoderConfig,
) -> Result<serde_json::Value, Error> {
    let (tokens, _, top_k) = routed.dims3()?;
    let moe = moe_layers(config);
    let layers: Vec<Tensor> = (0..config.num_hidden_layers)
        .map(|l| match moe.iter().position(|&m| m == l) {
            Some(i) => routed.narrow(1, i, 1),
            None => Tensor::zeros((tokens, 1, top_k), DType::I64, &Device::Cpu),
        })
        .collect::<candle_core::Result<_>>()?;
    let all_layers = Tensor::cat(&layers, 1)?;
    Ok(serde_json::json!({
        "input_ids": prompt,
        "output_ids": completion,
        "meta_info": {
            "prompt_tokens": prompt.len(),
            "completion_tokens": completion.len(),
            "routed_experts": encode_sglang_routed_experts(&all_layers)?,
            "routed_experts_dtype": "int32",
        },
    }))
}

fn main() -> Result<(), Error> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen3-moe-tiny");
    let outcome = run(&dir, 3e-4)?;
    if outcome.losses[1] >= outcome.losses[0] {
        return Err(format!("the loss did not fall: {:?}", outcome.losses).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_batch_replays_both_rollouts_and_the_report_sees_the_router_move() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen3-moe-tiny");
        let out = super::run(&dir, 3e-4).unwrap();
        let (before, after) = (&out.before.summary, &out.after.summary);
        // 2 MoE layers; the compared tokens: every token but each rollout's last, 9 + 7.
        assert_eq!(out.before.layers.len(), 2);
        assert_eq!(before.tokens_compared, 16);
        assert_eq!(before.decisions_compared, 32);
        // Labels: the completions, 7 + 3.
        assert_eq!(before.labels, 10);
        // Before the step the trainer routes as the rollouts did, and replay changes nothing.
        assert_eq!(before.decisions_differing, 0, "{}", out.before);
        assert!(before.max_kl.unwrap() < 1e-6, "{}", out.before);
        assert!(before.max_abs_log_prob_difference.unwrap() < 1e-4);
        // After it the router moved: some decisions differ, and the distributions with them.
        assert!(after.decisions_differing > 0, "{}", out.after);
        assert!(after.max_kl.unwrap() > 1e-6, "{}", out.after);
        assert!(out.losses[1] < out.losses[0], "{:?}", out.losses);
        for l in &out.after.labels {
            assert!(l.free.is_finite() && l.replayed.is_finite() && l.kl.is_finite());
        }
    }
}
