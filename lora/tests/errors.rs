//! Every adapter a user can get wrong is an error naming the file and the key: unsupported
//! config values, missing, misshapen and unused tensors, targets that match nothing.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::fixtures;
use patchwork_lora::{LoraAdapters, LoraOptions};
use patchwork_models::LoadOptions;
use serde_json::{Value, json};

/// llama-qv's adapter copied to a temporary folder, its config edited by `config` and its
/// tensors by `tensors`; the error of reading it and loading llama-tiny with it.
fn error_with(
    config: impl FnOnce(&mut serde_json::Map<String, Value>),
    tensors: impl FnOnce(&mut HashMap<String, Tensor>),
) -> String {
    let source = fixtures().join("lora/llama-qv");
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(source.join("adapter_config.json")).unwrap();
    let mut json: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    config(&mut json);
    std::fs::write(
        dir.path().join("adapter_config.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    let mut weights =
        candle_core::safetensors::load(source.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    tensors(&mut weights);
    candle_core::safetensors::save(&weights, dir.path().join("adapter_model.safetensors")).unwrap();
    load(dir.path()).expect_err("an error")
}

fn load(dir: &Path) -> Result<(), String> {
    let adapters =
        LoraAdapters::from_pretrained([dir], &LoraOptions::default()).map_err(|e| e.to_string())?;
    adapters
        .load_model(fixtures().join("llama-tiny"), &LoadOptions::default())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn config_error(key: &str, value: Value) -> String {
    let key_owned = key.to_string();
    error_with(
        move |c| {
            c.insert(key_owned, value);
        },
        |_| {},
    )
}

#[test]
fn unsupported_config_values_name_their_key() {
    for (key, value, says) in [
        ("use_dora", json!(true), "DoRA is not supported"),
        ("bias", json!("all"), "only \"none\""),
        ("bias", json!("lora_only"), "only \"none\""),
        ("peft_type", json!("PREFIX_TUNING"), "is not LoRA"),
        ("r", json!(0), "positive integer rank"),
        ("lora_alpha", json!("eight"), "expected a number"),
        ("lora_dropout", json!(1.5), "probability"),
        ("target_modules", json!("(unclosed"), "invalid regex"),
        ("target_modules", json!(null), "missing"),
        (
            "target_modules",
            json!(3),
            "list of module names or one regex",
        ),
        ("layers_to_transform", json!([-1]), "layer indices"),
        (
            "rank_pattern",
            json!({"q_proj": 0}),
            "positive integer rank",
        ),
        ("alpha_pattern", json!({"(": 2}), "invalid regex"),
        ("layer_replication", json!([[0, 1]]), "not supported"),
        ("lora_bias", json!(true), "not supported"),
        ("some_future_option", json!("on"), "not supported"),
    ] {
        let err = config_error(key, value.clone());
        assert!(
            err.contains("adapter_config.json") && err.contains(key) && err.contains(says),
            "{key} = {value}: {err}"
        );
    }
    // Keys left at their defaults and metadata are fine.
    let dir = fixtures().join("lora/llama-qv");
    load(&dir).unwrap();
}

#[test]
fn tensors_missing_misshapen_or_unused_are_named() {
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let err = error_with(
        |_| {},
        |t| {
            t.remove(key);
        },
    );
    assert!(
        err.contains("adapter_model.safetensors") && err.contains(key) && err.contains("missing"),
        "{err}"
    );

    let err = error_with(
        |_| {},
        |t| {
            t.insert(
                key.into(),
                Tensor::zeros((3, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
            );
        },
    );
    assert!(err.contains(key) && err.contains("shape [3, 64]"), "{err}");

    let extra = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight";
    let err = error_with(
        |_| {},
        |t| {
            let a = t[key].clone();
            t.insert(extra.into(), a);
        },
    );
    assert!(err.contains(extra) && err.contains("not used"), "{err}");
}

#[test]
fn a_config_matching_no_projection_is_an_error() {
    let err = error_with(
        |c| {
            c.insert("target_modules".into(), json!(["no_such_proj"]));
        },
        |t| t.clear(),
    );
    assert!(
        err.contains("target_modules") && err.contains("matches no projection"),
        "{err}"
    );
}

#[test]
fn missing_folders_and_files_are_named() {
    let err = load(Path::new("/no/such/adapter")).unwrap_err();
    assert!(err.contains("/no/such/adapter"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("lora/llama-qv/adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("missing"),
        "{err}"
    );
    let err = LoraAdapters::from_named(
        [
            ("a", fixtures().join("lora/llama-qv")),
            ("a", fixtures().join("lora/llama-qv")),
        ],
        &LoraOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("two adapters named \"a\""), "{err}");
}
