//! Several adapters on one model: switching per model and per call without reloading, merging
//! and unmerging, what the build report says, and a quantized base (QLoRA's setting).

mod common;

use common::{Case, cases, fixtures};
use patchwork_lora::{ActiveAdapter, LoraAdapters, LoraOptions, LoraProjection};
use patchwork_models::decoder::Extensions;
use patchwork_models::{ForwardOptions, LoadOptions};
use patchwork_quant::{Format, QuantizedLinear, Topology};
use patchwork_testing::{LOGITS, Tolerance, assert_close, assert_differs, values};

/// The cases on llama-tiny, loaded together (the last active).
fn llama_cases() -> (Vec<Case>, LoraAdapters) {
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.base.ends_with("llama-tiny"))
        .collect();
    assert!(cases.len() >= 3, "expected three adapters on llama-tiny");
    let adapters = LoraAdapters::from_named(
        cases.iter().map(|c| (c.name.clone(), c.adapter.clone())),
        &LoraOptions::default(),
    )
    .expect("the adapters read");
    (cases, adapters)
}

#[test]
fn several_adapters_switch_per_model_and_per_call_without_reloading() {
    let (cases, adapters) = llama_cases();
    let model = adapters
        .load_model(fixtures().join("llama-tiny"), &LoadOptions::default())
        .expect("loads");
    let last = cases.last().map(|c| c.name.clone());
    assert_eq!(adapters.active(), last, "the last adapter read is active");
    let base_reference = candle_core::safetensors::load(
        fixtures().join("llama-tiny/reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("the base reference");
    let ids = cases[0].get("input_ids").unwrap().clone();
    for case in &cases {
        adapters.set_active(Some(&case.name)).unwrap();
        let logits = model.forward(&ids, None).unwrap();
        assert_close(&logits, case.get("logits").unwrap(), LOGITS, &case.name);
    }
    adapters.set_active(None).unwrap();
    let base = model.forward(&ids, None).unwrap();
    assert_close(&base, &base_reference["logits"], LOGITS, "no adapter");

    // Per call: the call's choice wins over the model's (still none here).
    for case in &cases {
        let options = ForwardOptions {
            extensions: Extensions::new().with(ActiveAdapter::named(&case.name)),
            ..ForwardOptions::default()
        };
        let out = model.forward_with(&ids, None, None, &options).unwrap();
        let logits = out.logits.unwrap();
        assert_close(&logits, case.get("logits").unwrap(), LOGITS, &case.name);
    }
    adapters.set_active(Some(&cases[0].name)).unwrap();
    let options = ForwardOptions {
        extensions: Extensions::new().with(ActiveAdapter::none()),
        ..ForwardOptions::default()
    };
    let out = model.forward_with(&ids, None, None, &options).unwrap();
    assert_close(
        &out.logits.unwrap(),
        &base_reference["logits"],
        LOGITS,
        "none per call",
    );

    let unknown = ForwardOptions {
        extensions: Extensions::new().with(ActiveAdapter::named("nope")),
        ..ForwardOptions::default()
    };
    let err = model.forward_with(&ids, None, None, &unknown).unwrap_err();
    assert!(err.to_string().contains("\"nope\""), "{err}");
    let err = adapters.set_active(Some("nope")).unwrap_err();
    assert!(
        err.to_string().contains("no adapter named \"nope\""),
        "{err}"
    );
}

#[test]
fn merging_computes_the_same_and_unmerging_is_exact() {
    let (cases, adapters) = llama_cases();
    let model = adapters
        .load_model(fixtures().join("llama-tiny"), &LoadOptions::default())
        .unwrap();
    let ids = cases[0].get("input_ids").unwrap().clone();
    for case in &cases {
        adapters.set_active(Some(&case.name)).unwrap();
        let before = model.forward(&ids, None).unwrap();
        adapters.merge(&case.name).unwrap();
        assert_eq!(adapters.merged().as_deref(), Some(case.name.as_str()));
        let merged = model.forward(&ids, None).unwrap();
        assert_close(&merged, case.get("logits").unwrap(), LOGITS, "merged");
        // The merged weights are really used: one product instead of base + adapter differs
        // in rounding, never by much.
        adapters.unmerge();
        assert_eq!(adapters.merged(), None);
        let after = model.forward(&ids, None).unwrap();
        assert_close(&after, &before, Tolerance::absolute(0.0), "unmerged");
    }
}

#[test]
fn the_build_report_names_each_paths_adapters() {
    let (cases, adapters) = llama_cases();
    let model = adapters
        .load_model(fixtures().join("llama-tiny"), &LoadOptions::default())
        .unwrap();
    let report = model.report();
    for case in &cases {
        let paths = adapters.paths(&case.name).unwrap();
        assert!(!paths.is_empty());
        for path in &paths {
            let site = report
                .at(path)
                .unwrap_or_else(|| panic!("no site at {path}"));
            assert!(site.built::<LoraProjection>(), "{path}: {site:?}");
            let prefix = format!("adapter {}: r=", case.name);
            assert!(
                site.details.iter().any(|d| d.starts_with(&prefix)),
                "{path}: {:?}",
                site.details
            );
            let module = model.get_submodule_as::<LoraProjection>(path).unwrap();
            assert!(module.adapters().contains(&case.name.as_str()));
        }
    }
    let explain = model.explain().to_string();
    assert!(explain.contains("adapter llama-qv: r=4"), "{explain}");
}

#[test]
fn an_adapter_wraps_a_quantized_base() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "llama-qv")
        .expect("the llama-qv case");
    let adapters = LoraAdapters::from_pretrained([&case.adapter], &LoraOptions::default()).unwrap();
    let topology = Topology::new(Some(Format::Q8_0));
    let options = LoadOptions::default().with_added_patches(topology.patches().unwrap());
    let model = adapters.load_model(&case.base, &options).unwrap();
    let path = "model.layers.0.self_attn.q_proj";
    let q = model.get_submodule_as::<LoraProjection>(path).unwrap();
    assert!(
        q.base()
            .as_any()
            .downcast_ref::<QuantizedLinear>()
            .is_some(),
        "{path}: base {}",
        q.base().type_name()
    );
    let ids = case.get("input_ids").unwrap();
    let with = model.forward(ids, None).unwrap();
    // Close to the float adapter's logits (Q8_0 rounding), and the adapter still acts.
    assert_close(
        &with,
        case.get("logits").unwrap(),
        Tolerance::of_max(0.05),
        "q8_0 + adapter",
    );
    adapters.set_active(None).unwrap();
    let without = model.forward(ids, None).unwrap();
    assert_differs(&with, &without, 1e-2, "the adapter over q8_0");
    let err = adapters.merge("llama-qv").unwrap_err().to_string();
    assert!(
        err.contains(path) && err.contains("QuantizedLinear"),
        "{err}"
    );
}

#[test]
fn one_set_serves_one_model() {
    let (_, adapters) = llama_cases();
    adapters
        .load_model(fixtures().join("llama-tiny"), &LoadOptions::default())
        .unwrap();
    let err = adapters
        .load_model(fixtures().join("llama-tiny"), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("already serves a model"), "{err}");
}

#[test]
fn adapters_train_over_a_quantized_base() {
    // QLoRA's setting: gradients reach every adapter through the quantized layers after it
    // (the dequantized weights under gradients), close to the float base's gradients.
    for name in ["llama-all-linear", "qwen2-moe"] {
        let case = cases().into_iter().find(|c| c.name == name).unwrap();
        let adapters = LoraAdapters::from_named(
            [(case.name.clone(), case.adapter.clone())],
            &LoraOptions::default().trainable(),
        )
        .unwrap();
        let topology = Topology::new(Some(Format::Q8_0));
        let options = LoadOptions::default().with_added_patches(topology.patches().unwrap());
        let model = adapters.load_model(&case.base, &options).unwrap();
        let (loss, grads) =
            common::loss_and_gradients(&model, &adapters, &case, Default::default()).unwrap();
        assert_close(
            &loss,
            case.get("loss").unwrap(),
            Tolerance::of_max(0.01),
            name,
        );
        // Q8_0 rounds every weight and activation by up to half a step: each gradient keeps
        // the float base's direction (cosine) and size (norm ratio), which a gradient cut off
        // by a non-differentiable layer (zeros) or a wrong one does not.
        let (mut worst_cos, mut worst_norm) = (1f64, 0f64);
        for (key, g) in &grads {
            let reference = case.get(&format!("grad.{key}")).unwrap();
            let (a, b) = (values(g).unwrap(), values(reference).unwrap());
            let dot: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let na = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nb = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let cos = dot / (na * nb);
            assert!(
                cos > 0.99,
                "{key}: cosine {cos} with the float base's gradient"
            );
            assert!(
                (na / nb - 1.0).abs() < 0.05,
                "{key}: norm {na} against {nb}"
            );
            worst_cos = worst_cos.min(cos);
            worst_norm = worst_norm.max((na / nb - 1.0).abs());
        }
        println!(
            "{name}: {} gradients over q8_0, cosine >= {worst_cos:.4}, norms within {:.2}%",
            grads.len(),
            100.0 * worst_norm
        );
    }
}

#[test]
fn dropout_acts_in_training_mode_only() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "llama-all-linear")
        .unwrap();
    let (model, adapters) = case.load(&LoraOptions::default()).unwrap();
    assert_eq!(adapters.config(&case.name).unwrap().lora_dropout, 0.1);
    let ids = case.get("input_ids").unwrap();
    adapters.set_training(true);
    let train = model.forward(ids, None).unwrap();
    let moved = assert_differs(
        &train,
        case.get("logits").unwrap(),
        1e-3,
        "dropout in training",
    );
    adapters.set_training(false);
    let eval = model.forward(ids, None).unwrap();
    assert_close(
        &eval,
        case.get("logits").unwrap(),
        LOGITS,
        "no dropout in eval",
    );
    println!("dropout moved the logits by {moved:.3} in training mode");
}

#[test]
fn an_adapter_over_a_bf16_model() {
    // The base computing in bfloat16: the adapter's float32 matrices are cast to it, and the
    // logits stay within bf16's rounding of PEFT's float32 ones.
    let case = cases().into_iter().find(|c| c.name == "llama-qv").unwrap();
    let adapters = LoraAdapters::from_pretrained([&case.adapter], &LoraOptions::default()).unwrap();
    let options = LoadOptions::default().with_dtype(candle_core::DType::BF16);
    let model = adapters.load_model(&case.base, &options).unwrap();
    let ids = case.get("input_ids").unwrap();
    let with = model.forward(ids, None).unwrap();
    let report = assert_close(
        &with,
        case.get("logits").unwrap(),
        Tolerance::of_max(0.03),
        "bf16",
    );
    adapters.set_active(None).unwrap();
    let without = model.forward(ids, None).unwrap();
    let moved = assert_differs(&with, &without, 1.0, "the adapter over bf16");
    println!(
        "bf16: {:.3} from PEFT's float32 logits; the adapter moves them by {moved:.2}",
        report.max_abs_diff
    );
}
