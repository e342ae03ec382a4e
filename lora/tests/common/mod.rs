//! The PEFT reference cases (`fixtures/lora/<case>`, made by
//! `fixtures/oracle/make_lora_refs.py`) and what every test does with them.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use patchwork_lora::{LoraAdapters, LoraOptions};
use patchwork_models::{CausalLM, ForwardOptions, LoadOptions};

pub type Error = Box<dyn std::error::Error>;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// One reference case: the adapter folder, its base model, PEFT's results.
pub struct Case {
    pub name: String,
    pub adapter: PathBuf,
    pub base: PathBuf,
    pub reference: HashMap<String, Tensor>,
}

impl Case {
    pub fn get(&self, key: &str) -> Result<&Tensor, Error> {
        self.reference
            .get(key)
            .ok_or_else(|| format!("{}: no {key} in reference.safetensors", self.name).into())
    }

    /// Expert ids `replay_experts.L` by layer (empty for dense bases).
    pub fn replay(&self) -> BTreeMap<usize, Tensor> {
        self.reference
            .iter()
            .filter_map(|(k, v)| {
                Some((k.strip_prefix("replay_experts.")?.parse().ok()?, v.clone()))
            })
            .collect()
    }

    /// The adapter read with `options`, and the base model with it on.
    pub fn load(&self, options: &LoraOptions) -> Result<(CausalLM, LoraAdapters), Error> {
        let adapters = LoraAdapters::from_named([(self.name.clone(), &self.adapter)], options)?;
        let model = adapters.load_model(&self.base, &LoadOptions::default())?;
        Ok((model, adapters))
    }
}

/// Every case of `fixtures/lora/manifest.json` (`[{"name", "base", ...}]` or
/// `{name: {"base", ...}}`).
pub fn cases() -> Vec<Case> {
    let file = fixtures().join("lora/manifest.json");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let entries: Vec<(String, serde_json::Value)> = match json {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| (v["name"].as_str().expect("a case name").to_string(), v))
            .collect(),
        serde_json::Value::Object(map) => map.into_iter().collect(),
        _ => panic!("manifest.json: expected a list or an object"),
    };
    let cases: Vec<Case> = entries
        .into_iter()
        .map(|(name, v)| {
            let base = v["base"].as_str().expect("a base model");
            let adapter = fixtures().join("lora").join(&name);
            let reference =
                candle_core::safetensors::load(adapter.join("reference.safetensors"), &Device::Cpu)
                    .unwrap_or_else(|e| panic!("{name}: reference.safetensors: {e}"));
            Case {
                base: fixtures().join(base),
                adapter,
                name,
                reference,
            }
        })
        .collect();
    assert!(
        cases.len() >= 6,
        "expected every PEFT case, found {}",
        cases.len()
    );
    cases
}

/// Runs `check` on every case, then fails naming every case that failed.
pub fn for_each_case(check: impl Fn(&Case) -> Result<String, Error>) {
    let mut failures = Vec::new();
    for case in cases() {
        match check(&case) {
            Ok(summary) => println!("{}: {summary}", case.name),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A labelled pass (replaying `forced` when given) with its backward: loss and the adapter's
/// gradients by PEFT's key.
pub fn loss_and_gradients(
    model: &CausalLM,
    adapters: &LoraAdapters,
    case: &Case,
    forced: BTreeMap<usize, Tensor>,
) -> Result<(Tensor, BTreeMap<String, Tensor>), Error> {
    let moe = model.config().moe.is_some();
    let options = ForwardOptions {
        labels: Some(case.get("labels")?.clone()),
        output_router_logits: Some(moe),
        forced_experts: forced,
        ..ForwardOptions::default()
    };
    let out = model.forward_with(case.get("input_ids")?, None, None, &options)?;
    let loss = out.loss.ok_or("no loss")?;
    let grads = loss.backward()?;
    Ok((loss, adapters.gradients(&case.name, &grads)?))
}

/// Every gradient against `prefix.KEY` of the reference, both ways (no key missing on either
/// side): how many, and the largest share of its bound an element used.
pub fn check_gradients(
    case: &Case,
    prefix: &str,
    grads: &BTreeMap<String, Tensor>,
) -> Result<(usize, f32), Error> {
    let expected: Vec<&String> = case
        .reference
        .keys()
        .filter(|k| k.starts_with(prefix))
        .collect();
    if expected.len() != grads.len() {
        return Err(format!(
            "{} reference gradients ({prefix}*), {} of ours",
            expected.len(),
            grads.len()
        )
        .into());
    }
    let mut worst = 0f32;
    for (key, g) in grads {
        let reference = case.get(&format!("{prefix}{key}"))?;
        let report = patchwork_testing::check_gradient(key, g, reference)?;
        worst = worst.max(report.worst_ratio);
    }
    Ok((grads.len(), worst))
}
