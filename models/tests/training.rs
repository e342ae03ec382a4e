//! Training parity with transformers: the loss (and MoE aux loss) of a labelled batch and the
//! gradient of every checkpoint tensor, plain and under a replayed routing that differs from
//! the router's own choice, against `training_reference.safetensors` of every fixture that has
//! one (see `fixtures/oracle/make_training_refs.py`).
//!
//! Tolerances (fixtures README, `patchwork_testing`): losses `max |ours - ref| <= 1e-4 *
//! max(1, |ref|)`; gradients element by element, `|ours_i - ref_i| <= 1e-4 * |ref_i| + 1e-5 *
//! max |ref| + 1e-7` ([`GRADIENTS`], which says why).

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use common::training::{
    Pass, check_gradients, for_each_training_fixture, get, replayed_experts, run, trainable,
};
use common::{check_close, fixtures, ids};
use patch_core::PatchSet;
use patchwork_models::{AutoModelForCausalLM, ForwardOptions, LoadOptions};
use patchwork_testing::{GRADIENTS, check_gradient, values};

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
        let (n, used) = check_gradients("grad.", &grads, r)?;
        Ok(format!(
            "{summary}; {n} gradients within bounds (the worst element uses {:.0}% of its bound)",
            100.0 * used
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
        let (n, used) = check_gradients("replay_grad.", &grads, r)?;
        Ok(format!(
            "replay loss diff {dl:e}, aux diff {da:e}; {n} gradients within bounds (the worst \
             element uses {:.0}% of its bound); replayed ids used in layers {:?}",
            100.0 * used,
            forced.keys().collect::<Vec<_>>()
        ))
    });
}

/// The gradient comparison is per element: in every gradient, each of several elements spread
/// over its magnitudes (the largest, and ranks down to the smallest that the scale-tied floor
/// of [`GRADIENTS`] still leaves a 1% error visible on), changed by 1% alone, fails it.
#[test]
fn one_gradient_element_off_by_one_percent_is_caught_in_every_tensor() {
    for_each_training_fixture(|f, r| {
        let model = trainable(f)?;
        let grads = run(&model, r, BTreeMap::new())?.grads;
        let (mut tried, mut covered, mut entries) = (0, 0, 0);
        let mut a_median_element = None;
        for (key, ours) in &grads {
            let reference = get(r, &format!("grad.{key}"))?;
            let want = values(reference)?;
            // Unchanged, it passes: what fails below fails for the change.
            let max = check_gradient(key, ours, reference)?.scale;
            // A 1% change shows at an element when it exceeds the element's bound with room
            // to spare for the difference already there.
            let visible = |x: f32| 0.01 * x.abs() > 2.0 * GRADIENTS.bound(x, max);
            let mut by_size: Vec<usize> = (0..want.len()).filter(|&i| visible(want[i])).collect();
            by_size.sort_by(|&i, &j| want[i].abs().total_cmp(&want[j].abs()));
            entries += want.len();
            covered += by_size.len();
            if by_size.is_empty() {
                continue;
            }
            let last = by_size.len() - 1;
            let mut picks: Vec<usize> = [0, last / 10, last / 4, last / 2, 3 * last / 4, last]
                .iter()
                .map(|&rank| by_size[rank])
                .collect();
            picks.dedup();
            a_median_element.get_or_insert((key.clone(), by_size[last / 2]));
            let flat = values(ours)?;
            for at in picks {
                let mut off = flat.clone();
                off[at] *= 1.01;
                let off = Tensor::from_vec(off, ours.shape(), &Device::Cpu).unwrap();
                if check_gradient(key, &off, reference).is_ok() {
                    return Err(format!(
                        "a 1% change of {key}[{at}] (reference {}, max |ref| {max:e}) went unnoticed",
                        want[at]
                    ));
                }
                tried += 1;
            }
        }
        // The check over every tensor reports it too, naming the tensor.
        let (key, at) = a_median_element.ok_or("no gradient element to change")?;
        let mut changed = grads.clone();
        let mut off = values(&grads[&key])?;
        off[at] *= 1.01;
        changed.insert(
            key.clone(),
            Tensor::from_vec(off, grads[&key].shape(), &Device::Cpu).unwrap(),
        );
        match check_gradients("grad.", &changed, r) {
            Err(e) if e.contains(&key) => {}
            other => return Err(format!("{key}[{at}] changed by 1%: {other:?}")),
        }
        Ok(format!(
            "{tried} single-element 1% changes caught over {} gradients; a 1% change is \
             visible at {:.1}% of all gradient elements",
            grads.len(),
            100.0 * covered as f64 / entries as f64
        ))
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
