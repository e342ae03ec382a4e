//! PEFT's adapters on the fixtures give PEFT's logits, loss and adapter gradients (plain and
//! under a replayed MoE routing), and what this crate saves PEFT's layout again.
//!
//! Tolerances as for the models' own references (`patchwork_testing`): logits `LOGITS`,
//! gradients element by element (`GRADIENTS`: a 1% error in one element fails).

mod common;

use common::{check_gradients, for_each_case, loss_and_gradients};
use patchwork_lora::LoraOptions;
use patchwork_models::{AutoModelForCausalLM, LoadOptions};
use patchwork_testing::{LOGITS, assert_differs, check_close};

#[test]
fn peft_adapters_give_peft_logits() {
    for_each_case(|case| {
        let (model, adapters) = case.load(&LoraOptions::default())?;
        let ids = case.get("input_ids")?;
        let logits = model.forward(ids, None)?;
        let report = check_close("logits", &logits, case.get("logits")?, LOGITS)?;
        // The adapter is not a no-op: the base alone is far from PEFT's logits.
        adapters.set_active(None)?;
        let base = model.forward(ids, None)?;
        let moved = assert_differs(&base, case.get("logits")?, 1e-2, "base vs adapter logits");
        let paths = adapters.paths(&case.name)?;
        Ok(format!(
            "logits diff {:.1e}; the adapter moves them by {moved:.2} at {} paths",
            report.max_abs_diff,
            paths.len()
        ))
    });
}

#[test]
fn adapter_gradients_match_peft_with_the_base_frozen() {
    for_each_case(|case| {
        let (model, adapters) = case.load(&LoraOptions::default().trainable())?;
        if model.weights().is_trainable() || model.vars().is_ok() {
            return Err("the base has trainable weights".into());
        }
        let (loss, grads) = loss_and_gradients(&model, &adapters, case, Default::default())?;
        let dl = check_close("loss", &loss, case.get("loss")?, LOGITS)?.max_abs_diff;
        let (n, worst) = check_gradients(case, "grad.", &grads)?;
        let mut summary = format!(
            "loss diff {dl:.1e}; {n} adapter gradients within bounds (worst element {:.0}% of its bound)",
            100.0 * worst
        );
        let replay = case.replay();
        if !replay.is_empty() {
            let (loss, grads) = loss_and_gradients(&model, &adapters, case, replay)?;
            let dl = check_close("replay loss", &loss, case.get("replay_loss")?, LOGITS)?;
            let (n, worst) = check_gradients(case, "replay_grad.", &grads)?;
            summary += &format!(
                "; replayed routing: loss diff {:.1e}, {n} gradients (worst {:.0}%)",
                dl.max_abs_diff,
                100.0 * worst
            );
        }
        Ok(summary)
    });
}

#[test]
fn saved_adapters_keep_peft_keys_and_reload_to_the_same_logits() {
    for_each_case(|case| {
        let (model, adapters) = case.load(&LoraOptions::default())?;
        let dir = tempfile::tempdir()?;
        adapters.save_pretrained(&case.name, dir.path())?;
        let original = candle_core::safetensors::load(
            case.adapter.join("adapter_model.safetensors"),
            &candle_core::Device::Cpu,
        )?;
        let saved = candle_core::safetensors::load(
            dir.path().join("adapter_model.safetensors"),
            &candle_core::Device::Cpu,
        )?;
        let mut a: Vec<_> = original.keys().collect();
        let mut b: Vec<_> = saved.keys().collect();
        a.sort();
        b.sort();
        if a != b {
            return Err(format!("saved keys {b:?}, PEFT's {a:?}").into());
        }
        for (key, t) in &original {
            check_close(
                key,
                &saved[key],
                t,
                patchwork_testing::Tolerance::absolute(0.0),
            )?;
        }
        let reloaded = patchwork_lora::LoraAdapters::from_named(
            [(case.name.clone(), dir.path())],
            &LoraOptions::default(),
        )?;
        let model2 = reloaded.load_model(&case.base, &LoadOptions::default())?;
        let ids = case.get("input_ids")?;
        let d = check_close(
            "reloaded logits",
            &model2.forward(ids, None)?,
            &model.forward(ids, None)?,
            patchwork_testing::Tolerance::absolute(0.0),
        )?;
        Ok(format!(
            "{} tensors saved, reloaded logits diff {}",
            saved.len(),
            d.max_abs_diff
        ))
    });
}

#[test]
fn the_base_alone_is_the_base_model() {
    // With no adapter active, the wrapped model computes exactly what the base model does.
    for_each_case(|case| {
        let (model, adapters) = case.load(&LoraOptions::default())?;
        adapters.set_active(None)?;
        let plain = AutoModelForCausalLM::from_pretrained(&case.base, &LoadOptions::default())?;
        let ids = case.get("input_ids")?;
        let d = check_close(
            "logits without adapter",
            &model.forward(ids, None)?,
            &plain.forward(ids, None)?,
            patchwork_testing::Tolerance::absolute(1e-6),
        )?;
        Ok(format!("diff {:e}", d.max_abs_diff))
    });
}
