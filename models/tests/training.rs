//! Training parity with transformers: the loss (and MoE aux loss) of a labelled batch and the
//! gradient of every checkpoint tensor, plain and under a replayed routing that differs from
//! the router's own choice, against `training_reference.safetensors` of every fixture that has
//! one (see `fixtures/oracle/make_training_refs.py`).
//!
//! Tolerances (fixtures README): losses `max |ours - ref| <= 1e-4 * max(1, |ref|)`; gradients,
//! per tensor, `max |ours - ref| <= 2e-4 * max |ref| + 1e-7`.

mod common;

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use common::{Fixture, check_close, fixtures, ids};
use patch_core::PatchSet;
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};

/// A fixture's `training_reference.safetensors`, when it has one.
fn training_reference(f: &Fixture) -> Option<HashMap<String, Tensor>> {
    let path = f.dir.join("training_reference.safetensors");
    path.exists()
        .then(|| candle_core::safetensors::load(&path, &Device::Cpu).expect("training reference"))
}

fn trainable(f: &Fixture) -> Result<CausalLM, String> {
    let options = LoadOptions::default()
        .with_patches(PatchSet::empty())
        .trainable();
    AutoModelForCausalLM::from_pretrained(&f.dir, &options).map_err(|e| e.to_string())
}

fn get<'a>(r: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor, String> {
    r.get(key)
        .ok_or_else(|| format!("training_reference.safetensors has no {key:?}"))
}

/// Per tensor: `max |ours - ref| <= 2e-4 * max |ref| + 1e-7`; the max difference, or an error
/// naming the worst element.
fn check_gradient(key: &str, ours: &Tensor, reference: &Tensor) -> Result<f32, String> {
    if ours.dims() != reference.dims() {
        return Err(format!(
            "{key}: gradient shape {:?}, reference {:?}",
            ours.dims(),
            reference.dims()
        ));
    }
    let a: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
    let r: Vec<f32> = reference.flatten_all().unwrap().to_vec1().unwrap();
    let max_ref = r.iter().fold(0f32, |m, x| m.max(x.abs()));
    let tol = 2e-4 * max_ref + 1e-7;
    let (mut worst, mut at) = (0f32, 0);
    for (i, (x, y)) in a.iter().zip(&r).enumerate() {
        let d = (x - y).abs();
        let d = if d.is_nan() { f32::INFINITY } else { d };
        if d > worst {
            (worst, at) = (d, i);
        }
    }
    if worst > tol {
        return Err(format!(
            "{key}: max |ours - ref| = {worst:e} at flat index {at} (ours {}, ref {}), tolerance {tol:e}",
            a[at], r[at]
        ));
    }
    Ok(worst)
}

/// Every reference gradient `{prefix}KEY` against ours: same set of keys, each within
/// tolerance. Returns the worst difference relative to its tensor's max |ref|.
fn check_gradients(
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
    let mut worst_rel = 0f32;
    for (key, reference) in &wanted {
        match check_gradient(key, &ours[*key], reference) {
            Ok(d) => {
                let scale = reference
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                if scale > 0.0 {
                    worst_rel = worst_rel.max(d / scale);
                }
            }
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("\n"));
    }
    Ok((wanted.len(), worst_rel))
}

/// The MoE layers the reference replays, with their forced experts.
fn replayed_experts(r: &HashMap<String, Tensor>) -> BTreeMap<usize, Tensor> {
    r.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("replay_experts.")?.parse().ok()?, v.clone())))
        .collect()
}

/// What one labelled pass gives: loss, aux loss, gradients by checkpoint key, and the experts
/// each MoE layer used.
struct Pass {
    loss: Tensor,
    aux: Option<Tensor>,
    grads: BTreeMap<String, Tensor>,
    routing: Vec<(usize, Tensor)>,
}

/// One labelled pass and its backward (`forced`: a replayed routing).
fn run(
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
fn for_each_training_fixture(
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

#[test]
fn loss_and_every_gradient_match_transformers() {
    for_each_training_fixture(|f, r| {
        let model = trainable(f)?;
        let Pass {
            loss, aux, grads, ..
        } = run(&model, r, BTreeMap::new())?;
        let dl = check_close("loss", &loss, get(r, "loss")?, None)?;
        let mut summary = format!("loss {} (diff {dl:e})", loss.to_scalar::<f32>().unwrap());
        match (aux, r.get("aux_loss")) {
            (Some(aux), Some(reference)) => {
                let d = check_close("aux_loss", &aux, reference, None)?;
                summary += &format!(", aux loss diff {d:e}");
            }
            (None, None) => {}
            (aux, reference) => {
                return Err(format!(
                    "aux loss: ours {}, reference {}",
                    aux.is_some(),
                    reference.is_some()
                ));
            }
        }
        let (n, rel) = check_gradients("grad.", &grads, r)?;
        Ok(format!(
            "{summary}; {n} gradients within tolerance (worst {rel:e} of max |ref|)"
        ))
    });
}

#[test]
fn replayed_routing_loss_and_gradients_match_transformers() {
    for_each_training_fixture(|f, r| {
        let forced = replayed_experts(r);
        if forced.is_empty() {
            return Ok("no replay references (dense model)".into());
        }
        let model = trainable(f)?;
        // The replayed routing is not the router's own choice.
        let free = run(&model, r, BTreeMap::new())?.routing;
        let differs = free.iter().any(|(l, own)| ids(own) != ids(&forced[l]));
        if !differs {
            return Err(
                "the replayed routing equals the router's own: the test proves nothing".into(),
            );
        }
        let Pass {
            loss,
            aux,
            grads,
            routing,
        } = run(&model, r, forced.clone())?;
        for (layer, chosen) in &routing {
            if ids(chosen) != ids(&forced[layer]) {
                return Err(format!("layer {layer}: the replayed experts were not used"));
            }
        }
        let dl = check_close("replay_loss", &loss, get(r, "replay_loss")?, None)?;
        let aux = aux.ok_or("no aux loss under replay")?;
        let da = check_close("replay_aux_loss", &aux, get(r, "replay_aux_loss")?, None)?;
        let (n, rel) = check_gradients("replay_grad.", &grads, r)?;
        Ok(format!(
            "replay loss diff {dl:e}, aux diff {da:e}; {n} gradients within tolerance (worst {rel:e}); replayed ids used in layers {:?}",
            forced.keys().collect::<Vec<_>>()
        ))
    });
}

/// The gradient comparison is sensitive: one element of one gradient off by 1% fails it.
#[test]
fn one_gradient_element_off_by_one_percent_is_caught() {
    for_each_training_fixture(|f, r| {
        let model = trainable(f)?;
        let mut grads = run(&model, r, BTreeMap::new())?.grads;
        let key = "model.layers.0.self_attn.q_proj.weight";
        let g = grads.get(key).ok_or("no q_proj gradient")?.clone();
        let mut flat: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        let (at, _) =
            flat.iter().enumerate().fold(
                (0, 0f32),
                |m, (i, v)| if v.abs() > m.1 { (i, v.abs()) } else { m },
            );
        flat[at] *= 1.01;
        grads.insert(
            key.to_string(),
            Tensor::from_vec(flat, g.shape(), &Device::Cpu).unwrap(),
        );
        match check_gradients("grad.", &grads, r) {
            Err(e) => Ok(format!("caught: {e}")),
            Ok(_) => Err(format!("a 1% change of {key}[{at}] went unnoticed")),
        }
    });
}

/// A trainable model computes the reference logits through candle's differentiable ops, and
/// an inference model through the kernels: one model, two paths, the same numbers.
#[test]
fn trainable_models_compute_the_reference_logits() {
    for f in fixtures() {
        let model = trainable(&f).unwrap();
        let logits = model.forward(f.get("input_ids"), None).unwrap();
        assert!(
            logits.track_op(),
            "{}: a trainable pass records the graph",
            f.name
        );
        let d = check_close("logits", &logits, f.get("logits"), None).unwrap();
        let vars = model.vars().unwrap().all_vars();
        let params = model.weights().params().len();
        assert_eq!(
            vars.len(),
            params,
            "{}: every parameter is a variable",
            f.name
        );
        assert!(vars.iter().all(|v| v.dtype() == DType::F32));
        eprintln!(
            "{}: trainable logits max diff {d:e}, {} variables",
            f.name,
            vars.len()
        );
    }
}

/// An inference model has no variables and no gradients to give, and says how to get them.
#[test]
fn inference_models_say_how_to_train() {
    let f = fixtures().into_iter().next().unwrap();
    let model = AutoModelForCausalLM::from_pretrained(&f.dir, &LoadOptions::default()).unwrap();
    let err = model.vars().err().expect("no variables").to_string();
    assert!(err.contains("LoadOptions::trainable()"), "{err}");
    let logits = model.forward(f.get("input_ids"), None).unwrap();
    assert!(!logits.track_op(), "inference records no graph");
}

/// What generation records is what a free pass over the generated sequences routes to: the
/// rollout's routing, ready to replay (rows of different lengths, left-padded while generating).
#[test]
fn generation_records_the_routing_a_pass_over_its_sequences_takes() {
    for f in fixtures()
        .into_iter()
        .filter(|f| f.config.get("num_experts").is_some())
    {
        let model = AutoModelForCausalLM::from_pretrained(
            &f.dir,
            &LoadOptions::default().with_patches(PatchSet::empty()),
        )
        .unwrap();
        let config = patchwork_models::GenerationConfig {
            output_routed_experts: true,
            ignore_eos: true,
            ..patchwork_models::GenerationConfig::greedy(6)
        };
        let prompts = vec![vec![5u32, 9, 200, 31, 77], vec![3u32, 44]];
        let out = model.generate(&prompts, &config).unwrap();
        assert_eq!(out.routed_experts.len(), 2);
        for (row, seq) in out.sequences.iter().enumerate() {
            let routed = &out.routed_experts[row];
            let moe_layers = patchwork_models::routing::moe_layers(model.config());
            let k = model.config().moe.as_ref().unwrap().num_experts_per_tok;
            assert_eq!(routed.dims(), &[seq.len(), moe_layers.len(), k]);
            let forced =
                patchwork_models::routing::experts_from_vllm(routed, model.config()).unwrap();
            let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let free = model
                .forward_with(
                    &ids,
                    None,
                    None,
                    &ForwardOptions {
                        output_router_logits: Some(true),
                        ..ForwardOptions::default()
                    },
                )
                .unwrap();
            for record in &free.router_logits {
                let chosen = common::ids(&record.router.indices);
                let recorded = common::ids(&forced[&record.layer]);
                let n = (seq.len() - 1) * k;
                assert_eq!(
                    chosen[..n],
                    recorded[..n],
                    "{} row {row} layer {}",
                    f.name,
                    record.layer
                );
                assert!(
                    recorded[n..].iter().all(|&e| e == -1),
                    "the last token was never run"
                );
            }
        }
    }
}

/// `output_router_logits` defaults to the config's; `router_aux_loss_coef` weighs the aux loss.
#[test]
fn router_outputs_and_the_aux_coefficient_follow_the_config() {
    let mut json = serde_json::json!({
        "model_type": "qwen2_moe", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
        "shared_expert_intermediate_size": 8, "output_router_logits": true,
        "router_aux_loss_coef": 0.5,
    });
    let ids = Tensor::new(&[[1u32, 5, 7, 3]], &Device::Cpu).unwrap();
    let labels = Tensor::new(&[[1i64, 5, 7, 3]], &Device::Cpu).unwrap();
    let with = |options: ForwardOptions, json: &serde_json::Value| {
        AutoModelForCausalLM::from_config(json, &LoadOptions::default())
            .unwrap()
            .forward_with(&ids, None, None, &options)
            .unwrap()
    };
    let labelled = ForwardOptions {
        labels: Some(labels.clone()),
        ..ForwardOptions::default()
    };
    let out = with(labelled.clone(), &json);
    assert_eq!(
        out.router_logits.len(),
        2,
        "the config asks for router outputs"
    );
    let aux = out.aux_loss.unwrap().to_scalar::<f32>().unwrap();
    let loss = out.loss.unwrap().to_scalar::<f32>().unwrap();
    let off = with(
        ForwardOptions {
            output_router_logits: Some(false),
            ..labelled.clone()
        },
        &json,
    );
    assert!(off.router_logits.is_empty() && off.aux_loss.is_none());
    let ce = off.loss.unwrap().to_scalar::<f32>().unwrap();
    assert!(
        (loss - (ce + 0.5 * aux)).abs() < 1e-5,
        "{loss} = {ce} + 0.5 * {aux}"
    );
    json["output_router_logits"] = false.into();
    assert!(with(labelled, &json).router_logits.is_empty());
}
