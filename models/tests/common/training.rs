//! What the training parity tests share: the training references, a trainable model, one
//! labelled pass with its backward, and the check of every gradient.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use patch_core::PatchSet;
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};
use patchwork_testing::check_gradient;

use super::{Fixture, fixtures};

/// A fixture's `training_reference.safetensors`, when it has one.
pub fn training_reference(f: &Fixture) -> Option<HashMap<String, Tensor>> {
    let path = f.dir.join("training_reference.safetensors");
    path.exists()
        .then(|| candle_core::safetensors::load(&path, &Device::Cpu).expect("training reference"))
}

/// The fixture's model, unpatched, with every parameter a variable.
pub fn trainable(f: &Fixture) -> Result<CausalLM, String> {
    let options = LoadOptions::default()
        .with_patches(PatchSet::empty())
        .trainable();
    AutoModelForCausalLM::from_pretrained(&f.dir, &options).map_err(|e| e.to_string())
}

/// The reference tensor `key`, or an error naming it.
pub fn get<'a>(r: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor, String> {
    r.get(key)
        .ok_or_else(|| format!("training_reference.safetensors has no {key:?}"))
}

/// Every reference gradient `{prefix}KEY` against ours: same set of keys, each within
/// [`patchwork_testing::GRADIENTS`], element by element. Returns how many, and the largest fraction of its bound
/// an element uses.
pub fn check_gradients(
    prefix: &str,
    ours: &BTreeMap<String, Tensor>,
    reference: &HashMap<String, Tensor>,
) -> Result<(usize, f32), String> {
    let wanted: BTreeMap<&str, &Tensor> = reference
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?, v)))
        .collect();
    let missing: Vec<&&str> = wanted.keys().filter(|k| !ours.contains_key(**k)).collect();
    let extra: Vec<&String> = ours
        .keys()
        .filter(|k| !wanted.contains_key(k.as_str()))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(format!(
            "gradient keys differ: missing {missing:?}, extra {extra:?}"
        ));
    }
    let mut failures = Vec::new();
    let mut worst = 0f32;
    for (key, reference) in &wanted {
        match check_gradient(key, &ours[*key], reference) {
            Ok(report) => worst = worst.max(report.worst_ratio),
            Err(e) => failures.push(e.0),
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("\n"));
    }
    Ok((wanted.len(), worst))
}

/// The MoE layers the reference replays, with their forced experts.
pub fn replayed_experts(r: &HashMap<String, Tensor>) -> BTreeMap<usize, Tensor> {
    r.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("replay_experts.")?.parse().ok()?, v.clone())))
        .collect()
}

/// What one labelled pass gives: loss, aux loss, gradients by checkpoint key, and the experts
/// each MoE layer used.
pub struct Pass {
    /// The loss.
    pub loss: Tensor,
    /// The MoE aux loss, when there is one.
    pub aux: Option<Tensor>,
    /// Gradients by checkpoint key.
    pub grads: BTreeMap<String, Tensor>,
    /// The experts each MoE layer used.
    pub routing: Vec<(usize, Tensor)>,
}

/// One labelled pass and its backward (`forced`: a replayed routing).
pub fn run(
    model: &CausalLM,
    r: &HashMap<String, Tensor>,
    forced: BTreeMap<usize, Tensor>,
) -> Result<Pass, String> {
    let is_moe = model.config().moe.is_some();
    let options = ForwardOptions {
        labels: Some(get(r, "labels")?.clone()),
        output_router_logits: Some(is_moe),
        forced_experts: forced,
        ..ForwardOptions::default()
    };
    let out = model
        .forward_with(get(r, "input_ids")?, None, None, &options)
        .map_err(|e| e.to_string())?;
    let loss = out.loss.ok_or("no loss")?;
    let grads = loss.backward().map_err(|e| e.to_string())?;
    let by_key = model.gradients(&grads).map_err(|e| e.to_string())?;
    let routing = out
        .router_logits
        .iter()
        .map(|rec| (rec.layer, rec.router.indices.clone()))
        .collect();
    Ok(Pass {
        loss,
        aux: out.aux_loss,
        grads: by_key,
        routing,
    })
}

/// Runs `check` on every fixture with training references; fails with every failure at once.
pub fn for_each_training_fixture(
    check: impl Fn(&Fixture, &HashMap<String, Tensor>) -> Result<String, String>,
) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for f in fixtures() {
        let Some(r) = training_reference(&f) else {
            continue;
        };
        ran += 1;
        match check(&f, &r) {
            Ok(summary) => eprintln!("{}: {summary}", f.name),
            Err(e) => failures.push(format!("{}: {e}", f.name)),
        }
    }
    assert!(ran > 0, "no fixture has training references");
    assert!(
        failures.is_empty(),
        "training parity failures:\n{}",
        failures.join("\n")
    );
}
