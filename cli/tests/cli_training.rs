//! The `patchwork` binary's output contracts, checked on the reference checkpoints: labels, the loss and every gradient; routing files replayed.

mod cli_support;

use cli_support::*;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

#[test]
fn forward_with_labels_writes_the_loss_and_with_grads_every_gradient() {
    for name in ["llama-tiny", "qwen2-moe-tiny"] {
        let r = training_reference(name);
        let moe = name.contains("moe");
        // Labels as i32: any integer dtype is accepted.
        let inputs = HashMap::from([
            ("input_ids".to_string(), r["input_ids"].clone()),
            (
                "labels".to_string(),
                r["labels"].to_dtype(DType::I32).unwrap(),
            ),
        ]);
        let plain = forward(name, inputs.clone(), &[]);
        assert_eq!(plain["loss"].dims(), &[] as &[usize]);
        assert_close("loss", &plain["loss"], &r["loss"], |_| true);
        assert!(
            !plain.keys().any(|k| k.starts_with("grad.")),
            "{name}: grads only on --grads"
        );
        assert_eq!(plain.contains_key("aux_loss"), moe, "{name}");
        let with_grads = forward(name, inputs, &["--grads"]);
        assert_close("loss", &with_grads["loss"], &r["loss"], |_| true);
        if moe {
            assert_close("aux_loss", &with_grads["aux_loss"], &r["aux_loss"], |_| {
                true
            });
        }
        let expected: Vec<&String> = r.keys().filter(|k| k.starts_with("grad.")).collect();
        let written = with_grads.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(
            written,
            expected.len(),
            "{name}: one gradient per checkpoint tensor"
        );
        for key in expected {
            assert_gradient_close(key, &with_grads[key], &r[key]);
        }
    }
}

#[test]
fn forward_replays_a_routing_file_and_its_own_output() {
    let name = "qwen2-moe-tiny";
    let r = training_reference(name);
    let dir = tempfile::tempdir().unwrap();
    // The reference's replayed routing, under forward's own key names, as u8.
    let routing = dir.path().join("routing.safetensors");
    let forced: HashMap<String, Tensor> = r
        .iter()
        .filter_map(|(k, v)| {
            let l = k.strip_prefix("replay_experts.")?;
            Some((
                format!("selected_experts.{l}"),
                v.to_dtype(DType::U8).unwrap(),
            ))
        })
        .collect();
    candle_core::safetensors::save(&forced, &routing).unwrap();
    let inputs = HashMap::from([
        ("input_ids".to_string(), r["input_ids"].clone()),
        ("labels".to_string(), r["labels"].clone()),
    ]);
    let replayed = forward(
        name,
        inputs.clone(),
        &["--grads", "--forced-experts", routing.to_str().unwrap()],
    );
    assert_close("replay_loss", &replayed["loss"], &r["replay_loss"], |_| {
        true
    });
    assert_close(
        "replay_aux_loss",
        &replayed["aux_loss"],
        &r["replay_aux_loss"],
        |_| true,
    );
    for (key, reference) in r.iter().filter(|(k, _)| k.starts_with("replay_grad.")) {
        let ours = &replayed[&key.replacen("replay_", "", 1)];
        assert_gradient_close(key, ours, reference);
    }
    for l in [0, 2] {
        let ours: Vec<i64> = replayed[&format!("selected_experts.{l}")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<i64> = r[&format!("replay_experts.{l}")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours, want, "layer {l}: the replayed experts were used");
    }
    // One pass's output replays in another: the same file round-trips.
    let out_file = dir.path().join("replayed.safetensors");
    candle_core::safetensors::save(&replayed, &out_file).unwrap();
    let again = forward(
        name,
        inputs,
        &["--forced-experts", out_file.to_str().unwrap()],
    );
    assert_close("loss", &again["loss"], &r["replay_loss"], |_| true);

    // Errors name the layer and the position.
    let inputs_path = dir.path().join("in.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([("input_ids".to_string(), r["input_ids"].clone())]),
        &inputs_path,
    )
    .unwrap();
    let replay_error = |layer: usize, ids: Tensor| {
        let routing = dir.path().join("bad.safetensors");
        candle_core::safetensors::save(
            &HashMap::from([(format!("selected_experts.{layer}"), ids)]),
            &routing,
        )
        .unwrap();
        let failed = patchwork(&[
            "forward",
            fixture(name).to_str().unwrap(),
            "--inputs",
            inputs_path.to_str().unwrap(),
            "--out",
            dir.path().join("o.safetensors").to_str().unwrap(),
            "--forced-experts",
            routing.to_str().unwrap(),
        ]);
        assert!(!failed.status.success());
        String::from_utf8_lossy(&failed.stderr).into_owned()
    };
    let mut ids: Vec<i64> = r["replay_experts.2"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    ids[7] = 8;
    let shape = r["replay_experts.2"].shape().clone();
    let err = replay_error(2, Tensor::from_vec(ids, shape, &Device::Cpu).unwrap());
    assert!(
        err.contains("forced_experts[2]") && err.contains("expert 8 at token 3, choice 1"),
        "{err}"
    );
    let err = replay_error(1, r["replay_experts.0"].clone());
    assert!(err.contains("layer 1 is not an MoE layer"), "{err}");
}
