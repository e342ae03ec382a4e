//! Training only a LoRA adapter on a frozen MoE base, and saving it as PEFT does.
//!
//! 1. A new adapter on every linear projection PEFT's `"all-linear"` names (`A` drawn as PEFT
//!    draws it, `B` zero: the model starts as its base), its matrices trainable `Var`s; the
//!    base (the embedded qwen2-moe-tiny) loaded as usual, so none of its weights is a `Var`.
//! 2. A few AdamW steps on a labelled batch with the router outputs on (the loss includes the
//!    MoE aux loss): the loss falls at every step, and only the adapter moves.
//! 3. `save_pretrained` writes `adapter_config.json` and `adapter_model.safetensors` with PEFT's
//!    keys; read back (frozen) on a fresh load of the base, it gives the same logits.
//!
//! `cargo run --release --example lora_training` (set `LORA_TRAINING_OUT=DIR` to keep the
//! adapter: `fixtures/oracle/check_lora_adapter.py` loads such a folder in PEFT).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use patchwork_lora::{LoraAdapters, LoraConfig, LoraOptions};
use patchwork_models::{ForwardOptions, LoadOptions};
use patchwork_testing::{LOGITS, Tolerance, check_close};

type Error = Box<dyn std::error::Error>;

/// Trains a new adapter on the checkpoint `dir` for `steps` steps, saves it to `out` and
/// checks the reload; returns the losses.
pub fn run(dir: &Path, out: &Path, steps: usize) -> Result<Vec<f32>, Error> {
    // 1. The base, frozen, and a new adapter over it.
    let config = LoraConfig::from_text(
        Path::new("adapter_config.json"),
        r#"{"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
            "target_modules": "all-linear", "lora_dropout": 0.0}"#,
    )?;
    let options = LoraOptions::default().trainable().with_seed(7);
    let adapters = LoraAdapters::new_adapters([("sql", config)], &options)?;
    let model = adapters.load_model(dir, &LoadOptions::default())?;
    if model.vars().is_ok() {
        return Err("the base has trainable weights".into());
    }
    let vars = adapters.vars("sql")?;
    println!(
        "adapter \"sql\": {} matrices at {} projections",
        vars.len(),
        adapters.paths("sql")?.len()
    );

    // 2. Train the adapter alone.
    let ids: Vec<u32> = vec![1, 17, 42, 99, 7, 23, 5, 61, 33, 12];
    let t = ids.len();
    let input_ids = Tensor::from_vec(ids.clone(), (1, t), &Device::Cpu)?;
    let labels = Tensor::from_vec(
        ids.iter().map(|&i| i as i64).collect(),
        (1, t),
        &Device::Cpu,
    )?;
    let pass = ForwardOptions {
        labels: Some(labels),
        output_router_logits: Some(true),
        ..ForwardOptions::default()
    };
    let before = model.forward(&input_ids, None)?;
    let mut optimizer = AdamW::new(
        vars.values().cloned().collect(),
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let mut losses = Vec::with_capacity(steps);
    for step in 0..steps {
        let out = model.forward_with(&input_ids, None, None, &pass)?;
        let loss = out.loss.ok_or("no loss")?;
        let value = loss.to_scalar::<f32>()?;
        let aux = out.aux_loss.map(|a| a.to_scalar::<f32>()).transpose()?;
        println!(
            "step {step}: loss {value:.4} (aux {:.4})",
            aux.unwrap_or(0.0)
        );
        losses.push(value);
        optimizer.backward_step(&loss)?;
    }
    let trained = model.forward(&input_ids, None)?;
    let moved = patchwork_testing::max_abs_diff(&trained, &before)?;
    println!("the logits moved by up to {moved:.3}");

    // 3. Save as PEFT does, and read back on a fresh base.
    adapters.save_pretrained("sql", out)?;
    let reloaded = LoraAdapters::from_named([("sql", out)], &LoraOptions::default())?;
    let model2 = reloaded.load_model(dir, &LoadOptions::default())?;
    let again = model2.forward(&input_ids, None)?;
    // The same values (the training pass computed on candle's ops, this one on the kernels).
    let saved =
        candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)?;
    for (key, var) in &vars {
        let file = saved.get(key).ok_or_else(|| format!("{key} not saved"))?;
        check_close(key, file, var.as_tensor(), Tolerance::absolute(0.0))?;
    }
    let diff = check_close("reloaded logits", &again, &trained, LOGITS)?;
    println!(
        "saved to {}; reloaded logits differ by {:.1e}",
        out.display(),
        diff.max_abs_diff
    );
    Ok(losses)
}

fn main() -> Result<(), Error> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2-moe-tiny");
    let (out, keep) = match std::env::var_os("LORA_TRAINING_OUT") {
        Some(out) => (PathBuf::from(out), true),
        None => (
            std::env::temp_dir().join(format!("patchwork-lora-{}", std::process::id())),
            false,
        ),
    };
    let losses = run(&dir, &out, 5);
    if !keep {
        let _ = std::fs::remove_dir_all(&out);
    }
    let losses = losses?;
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
