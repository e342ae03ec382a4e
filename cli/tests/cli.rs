//! The `patchwork` binary's output contracts, checked on the reference checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

fn patchwork(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "patchwork failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// `max |a - b| <= 1e-4 * max(1, max |b|)` over the entries `keep` selects, every one finite
/// (the fixtures' tolerance, `patchwork_testing::LOGITS`).
fn assert_close(what: &str, a: &Tensor, b: &Tensor, keep: impl Fn(usize) -> bool) {
    patchwork_testing::assert_close_where(a, b, patchwork_testing::LOGITS, what, keep);
}

#[test]
fn inspect_prints_type_count_dtype_and_explain() {
    let text = stdout(&patchwork(&[
        "inspect",
        fixture("llama-tiny").to_str().unwrap(),
    ]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "model_type: llama");
    assert_eq!(lines[1], "architecture: LlamaForCausalLM");
    assert_eq!(lines[2], "parameters: 102720");
    assert_eq!(lines[3], "dtype: float32");
    assert!(
        text.contains("patch explain: 7 sites")
            && text.contains("model.layers.0-1.self_attn.q_proj"),
        "{text}"
    );
}

#[test]
fn forward_writes_logits_matching_the_reference() {
    let r = reference("llama-tiny");
    let dir = tempfile::tempdir().unwrap();
    for (ids, mask, expected) in [
        ("input_ids", None, "logits"),
        (
            "padded_input_ids",
            Some("padded_attention_mask"),
            "padded_logits",
        ),
    ] {
        let inputs = dir.path().join("in.safetensors");
        let out = dir.path().join("out.safetensors");
        let mut tensors = HashMap::from([("input_ids".to_string(), r[ids].clone())]);
        if let Some(m) = mask {
            tensors.insert("attention_mask".into(), r[m].clone());
        }
        candle_core::safetensors::save(&tensors, &inputs).unwrap();
        stdout(&patchwork(&[
            "forward",
            fixture("llama-tiny").to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]));
        let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        assert_eq!(written.len(), 1, "a dense model writes logits only");
        let logits = &written["logits"];
        assert_eq!(logits.dtype(), DType::F32);
        let keep: Vec<i64> = match mask {
            Some(m) => r[m].flatten_all().unwrap().to_vec1().unwrap(),
            None => vec![1; 24],
        };
        assert_close(expected, logits, &r[expected], |i| keep[i / 256] == 1);
    }
}

#[test]
fn forward_accepts_u32_ids_and_rejects_bad_inputs() {
    let r = reference("llama-tiny");
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.safetensors");
    let out = dir.path().join("out.safetensors");
    let run = |tensors: HashMap<String, Tensor>| {
        candle_core::safetensors::save(&tensors, &inputs).unwrap();
        patchwork(&[
            "forward",
            fixture("llama-tiny").to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    stdout(&run(HashMap::from([("input_ids".to_string(), ids)])));
    let logits = candle_core::safetensors::load(&out, &Device::Cpu).unwrap()["logits"].clone();
    assert_close("u32 ids", &logits, &r["logits"], |_| true);

    let bad = run(HashMap::from([(
        "input_ids".to_string(),
        Tensor::new(&[[3i64, 999]], &Device::Cpu).unwrap(),
    )]));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("999") && err.contains("256"), "{err}");
    let missing = run(HashMap::from([(
        "tokens".to_string(),
        r["input_ids"].clone(),
    )]));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("input_ids"));
}

#[test]
fn generate_prints_the_whole_sequence_last() {
    let r = reference("llama-tiny");
    let prompt: Vec<i64> = r["gen_prompt"].flatten_all().unwrap().to_vec1().unwrap();
    let expected: Vec<i64> = r["gen_output"].flatten_all().unwrap().to_vec1().unwrap();
    let prompt_arg: Vec<String> = prompt.iter().map(i64::to_string).collect();
    let text = stdout(&patchwork(&[
        "generate",
        fixture("llama-tiny").to_str().unwrap(),
        "--prompt-ids",
        &prompt_arg.join(","),
        "--max-new-tokens",
        "16",
        "--ignore-eos",
    ]));
    let last = text.lines().last().unwrap();
    let expected: Vec<String> = expected.iter().map(i64::to_string).collect();
    assert_eq!(last, expected.join(","));

    let sample = |seed: &str| {
        let text = stdout(&patchwork(&[
            "generate",
            fixture("llama-tiny").to_str().unwrap(),
            "--prompt-ids",
            "5,6,7",
            "--max-new-tokens",
            "8",
            "--ignore-eos",
            "--temperature",
            "1.5",
            "--top-k",
            "40",
            "--top-p",
            "0.9",
            "--seed",
            seed,
        ]));
        text.lines().last().unwrap().to_string()
    };
    assert_eq!(sample("1"), sample("1"));
    assert!(sample("1").starts_with("5,6,7,"));
}

#[test]
fn generate_rejects_bad_arguments() {
    let dir = fixture("llama-tiny");
    let out = patchwork(&[
        "generate",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "5",
        "--max-new-tokens",
        "2",
        "--top-k",
        "3",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--temperature"));
    let out = patchwork(&[
        "generate",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "5,300",
        "--max-new-tokens",
        "2",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("300"));
    let out = patchwork(&[
        "generate",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "5",
        "--max-new-tokens",
        "2",
        "--temperature",
        "0",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("temperature"));
    let out = patchwork(&["inspect", "/nonexistent/model"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
}

#[test]
fn forward_writes_router_outputs_of_moe_layers() {
    let r = reference("qwen2-moe-tiny");
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.safetensors");
    let out = dir.path().join("out.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([("input_ids".to_string(), r["input_ids"].clone())]),
        &inputs,
    )
    .unwrap();
    stdout(&patchwork(&[
        "forward",
        fixture("qwen2-moe-tiny").to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let mut keys: Vec<&String> = written.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "logits",
            "router_logits.0",
            "router_logits.2",
            "selected_experts.0",
            "selected_experts.2"
        ]
    );
    assert_close("logits", &written["logits"], &r["logits"], |_| true);
    for l in [0, 2] {
        let rl = &written[&format!("router_logits.{l}")];
        assert_eq!((rl.dtype(), rl.dims()), (DType::F32, &[24usize, 8][..]));
        assert_close(
            "router logits",
            rl,
            &r[&format!("router_logits.{l}")],
            |_| true,
        );
        let se = &written[&format!("selected_experts.{l}")];
        assert_eq!((se.dtype(), se.dims()), (DType::I64, &[24usize, 2][..]));
        let ours: Vec<i64> = se.flatten_all().unwrap().to_vec1().unwrap();
        let theirs: Vec<i64> = r[&format!("selected_experts.{l}")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours, theirs);
    }
    let text = stdout(&patchwork(&[
        "inspect",
        fixture("qwen2-moe-tiny").to_str().unwrap(),
    ]));
    assert!(
        text.starts_with("model_type: qwen2_moe\narchitecture: Qwen2MoeForCausalLM\n"),
        "{text}"
    );
    assert!(
        text.contains("Qwen2MoeExperts") && text.contains("dtype: float32"),
        "{text}"
    );
}

#[test]
fn bench_reports_load_speeds_memory_and_a_parsable_last_line() {
    let dir = fixture("llama-tiny");
    let args = [
        "bench",
        dir.to_str().unwrap(),
        "--prompt-len",
        "5",
        "--decode",
        "3",
        "--repeats",
        "2",
    ];
    let text = stdout(&patchwork(&args));
    assert!(
        text.contains("load: ") && text.contains("peak_rss: "),
        "{text}"
    );
    assert_eq!(text.matches("repeat ").count(), 2, "{text}");
    let last = text.lines().last().unwrap();
    let (p, d) = last.split_once(' ').unwrap();
    let p: f64 = p.strip_prefix("prefill_tok_s=").unwrap().parse().unwrap();
    let d: f64 = d.strip_prefix("decode_tok_s=").unwrap().parse().unwrap();
    assert!(p > 0.0 && d > 0.0, "{last}");
    let out = patchwork(&["bench", dir.to_str().unwrap(), "--repeats", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--repeats"));
}

fn training_reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture(name).join("training_reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// Runs `forward` on `fixture` with `inputs` and extra flags; returns what it wrote.
fn forward(
    fixture_name: &str,
    inputs: HashMap<String, Tensor>,
    extra: &[&str],
) -> HashMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let inputs_path = dir.path().join("in.safetensors");
    let out = dir.path().join("out.safetensors");
    candle_core::safetensors::save(&inputs, &inputs_path).unwrap();
    let (dir_arg, in_arg, out_arg) = (
        fixture(fixture_name),
        inputs_path.to_str().unwrap().to_string(),
        out.to_str().unwrap().to_string(),
    );
    let mut args = vec![
        "forward",
        dir_arg.to_str().unwrap(),
        "--inputs",
        &in_arg,
        "--out",
        &out_arg,
    ];
    args.extend_from_slice(extra);
    stdout(&patchwork(&args));
    candle_core::safetensors::load(&out, &Device::Cpu).unwrap()
}

/// A float32 gradient within `patchwork_testing::GRADIENTS` of the reference, element by
/// element (the fixtures' gradient tolerance).
fn assert_gradient_close(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.dtype(), DType::F32, "{what}");
    if let Err(e) = patchwork_testing::check_gradient(what, a, b) {
        panic!("{e}");
    }
}

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

/// Every command runs on every family's reference checkpoint: `inspect` names it, `forward`
/// reproduces its logits, `generate` its greedy ids, `resave` its files, `bench` runs.
#[test]
fn every_command_runs_on_every_family() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("reference.safetensors").exists() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let r = reference(&name);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let model_type = config["model_type"].as_str().unwrap();
        let text = stdout(&patchwork(&["inspect", dir.to_str().unwrap()]));
        assert!(
            text.starts_with(&format!("model_type: {model_type}\n")),
            "{text}"
        );

        let written = forward(
            &name,
            HashMap::from([("input_ids".to_string(), r["input_ids"].clone())]),
            &[],
        );
        assert_close(
            &format!("{name} logits"),
            &written["logits"],
            &r["logits"],
            |_| true,
        );

        let prompt: Vec<i64> = r["gen_prompt"].flatten_all().unwrap().to_vec1().unwrap();
        let expected: Vec<i64> = r["gen_output"].flatten_all().unwrap().to_vec1().unwrap();
        let prompt_arg: Vec<String> = prompt.iter().map(i64::to_string).collect();
        let new = (expected.len() - prompt.len()).to_string();
        let text = stdout(&patchwork(&[
            "generate",
            dir.to_str().unwrap(),
            "--prompt-ids",
            &prompt_arg.join(","),
            "--max-new-tokens",
            &new,
            "--ignore-eos",
        ]));
        let expected: Vec<String> = expected.iter().map(i64::to_string).collect();
        assert_eq!(text.lines().last().unwrap(), expected.join(","), "{name}");

        let out = tempfile::tempdir().unwrap();
        stdout(&patchwork(&[
            "resave",
            dir.to_str().unwrap(),
            out.path().to_str().unwrap(),
        ]));
        let original = std::fs::read(dir.join("model.safetensors")).unwrap();
        let saved = std::fs::read(out.path().join("model.safetensors")).unwrap();
        let tensors = |b: &[u8]| {
            let st = safetensors::SafeTensors::deserialize(b).unwrap();
            let mut t: Vec<(String, Vec<u8>)> = st
                .tensors()
                .into_iter()
                .map(|(k, v)| (k, v.data().to_vec()))
                .collect();
            t.sort();
            t
        };
        assert!(
            tensors(&original) == tensors(&saved),
            "{name}: resave is bit-exact"
        );

        let text = stdout(&patchwork(&[
            "bench",
            dir.to_str().unwrap(),
            "--prompt-len",
            "8",
            "--decode",
            "4",
            "--repeats",
            "1",
        ]));
        assert!(
            text.lines().last().unwrap().starts_with("prefill_tok_s="),
            "{text}"
        );
        seen.push(model_type.to_string());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["llama", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe"]);
}

#[test]
fn forward_writes_hidden_states_and_attentions_matching_transformers() {
    for name in ["llama-tiny", "qwen3-tiny"] {
        let r = training_reference(name);
        let out = forward(
            name,
            HashMap::from([("input_ids".to_string(), r["input_ids"].clone())]),
            &["--output-hidden-states", "--output-attentions"],
        );
        let hidden: Vec<&String> = r
            .keys()
            .filter(|k| k.starts_with("hidden_states."))
            .collect();
        let attentions: Vec<&String> = r.keys().filter(|k| k.starts_with("attentions.")).collect();
        assert!(!hidden.is_empty() && !attentions.is_empty());
        for key in hidden.into_iter().chain(attentions) {
            assert_eq!(out[key].dtype(), DType::F32, "{name} {key}");
            assert_close(&format!("{name} {key}"), &out[key], &r[key], |_| true);
        }
        let plain = forward(
            name,
            HashMap::from([("input_ids".to_string(), r["input_ids"].clone())]),
            &[],
        );
        assert!(
            !plain
                .keys()
                .any(|k| k.starts_with("hidden_states.") || k.starts_with("attentions."))
        );
    }
}

#[test]
fn compare_reports_every_site_and_passes_for_the_fused_qkv_patch_set() {
    for name in ["qwen2-moe-tiny", "qwen3-tiny"] {
        let text = stdout(&patchwork(&["compare", fixture(name).to_str().unwrap()]));
        assert!(
            text.contains("model.layers.0.self_attn") && text.contains("model.norm"),
            "{text}"
        );
        assert!(
            text.lines()
                .last()
                .unwrap()
                .starts_with("every site within"),
            "{text}"
        );
    }
    let bad = patchwork(&[
        "compare",
        fixture("llama-tiny").to_str().unwrap(),
        "--patch-set",
        "nope",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("nope") && err.contains("fused-qkv"), "{err}");
}

#[test]
fn every_command_quantizes_with_quantize() {
    let dir = fixture("qwen3-tiny");
    let d = dir.to_str().unwrap();
    let text = stdout(&patchwork(&["inspect", d, "--quantize", "q8_0"]));
    // The topology's patches at the projection and embedding sites, and each path's format,
    // layers folded.
    let site_row = |site: &str, builds: &str, rule: &str| {
        text.lines().any(|l| {
            let cols: Vec<&str> = l
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            cols.first() == Some(&site) && cols.contains(&builds) && cols.contains(&rule)
        })
    };
    assert!(
        site_row(
            "Linear",
            "QuantizedLinear (q8_0)",
            r#"exact "Linear" (run time)"#
        ),
        "{text}"
    );
    assert!(
        site_row(
            "Embedding",
            "QuantizedEmbedding (q8_0)",
            r#"pattern "^Embedding$" (run time)"#
        ),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            .trim_start()
            .starts_with("model.layers.0-2.self_attn.q_proj ")
            && l.ends_with("QuantizedLinear (q8_0) by exact \"Linear\"; q8_0 (default)")),
        "{text}"
    );
    let text = stdout(&patchwork(&[
        "generate",
        d,
        "--prompt-ids",
        "5,6,7",
        "--max-new-tokens",
        "4",
        "--ignore-eos",
        "--quantize",
        "q8_0",
    ]));
    assert_eq!(text.lines().last().unwrap().split(',').count(), 7, "{text}");
    let args = [
        "bench",
        d,
        "--prompt-len",
        "4",
        "--decode",
        "2",
        "--repeats",
        "1",
        "--quantize",
        "q8_0",
    ];
    let text = stdout(&patchwork(&args));
    assert!(
        text.lines().last().unwrap().starts_with("prefill_tok_s="),
        "{text}"
    );
    // A format the widths do not allow falls back, and says so; rules apply by path.
    let text = stdout(&patchwork(&[
        "inspect",
        d,
        "--quantize",
        "q4k",
        "--quantize-rule",
        "lm_head=q8_0",
        "--quantize-rule",
        r"layers\.0\.=none",
    ]));
    assert!(
        text.contains("q5_0 (default asked q4_k; q4_k needs rows in blocks of 256, these have 64)"),
        "{text}"
    );
    assert!(
        text.contains("lm_head") && text.contains("q8_0 (rule /lm_head/)"),
        "{text}"
    );
    assert!(text.contains(r"float (rule /layers\.0\./)"), "{text}");
    // Unknown formats and malformed rules: errors naming them.
    let out = patchwork(&["inspect", d, "--quantize", "q3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown format \"q3\" (known: f16, bf16, q8_0"),
        "{err}"
    );
    let out = patchwork(&["inspect", d, "--quantize-rule", "lm_head"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("expected REGEX=FORMAT"),
        "{err}"
    );
}
