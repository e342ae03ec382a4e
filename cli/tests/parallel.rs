//! `--parallel` under `mpirun -n 2` on this machine: every output of `forward` (logits,
//! router outputs, loss, aux loss, gradients by checkpoint key, replayed routing) and of
//! `generate` equals one process's; bad sizes, a missing launcher and a failing rank end with
//! an error, never a hang. Needs Open MPI's `mpirun` (`.ci/run` installs it).
#![cfg(feature = "mpi")]

mod cli_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use cli_support::{fixture, patchwork, stdout, training_reference};
use patchwork_testing::{Tolerance, assert_close_where};

/// No run here takes more than seconds; past this a run is taken to hang.
const LIMIT: Duration = Duration::from_secs(300);

/// "identical to one process within 1e-5 relative": of the tensor's largest entry.
const SAME: Tolerance = Tolerance::of_max(1e-5);

/// Runs `command` with a time limit: a run past it is killed and the test fails.
fn run_limited(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (Open MPI) must be installed for --parallel's tests: apt-get install openmpi-bin libopenmpi-dev");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > LIMIT {
            child.kill().unwrap();
            panic!("{command:?} still running after {LIMIT:?}: a rank waits forever");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `mpirun -n N` (as root too, more ranks than cores allowed) running `program args`.
fn mpirun(n: usize, program: &str, args: &[&str]) -> Output {
    let mut command = Command::new("mpirun");
    command
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-n",
            &n.to_string(),
        ])
        .arg(program)
        .args(args);
    run_limited(command)
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_patchwork")
}

fn save(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
    let path = dir.join(name);
    candle_core::safetensors::save(tensors, &path).unwrap();
    path
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// `forward` on `name` with `inputs` and `extra`, in one process and under `mpirun -n 2
/// --parallel plan`: both outputs.
fn forward_both(
    name: &str,
    plan: &str,
    inputs: &HashMap<String, Tensor>,
    extra: &[&str],
) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    forward_both_on(2, name, plan, inputs, extra)
}

/// [`forward_both`] under `mpirun -n ranks`.
fn forward_both_on(
    ranks: usize,
    name: &str,
    plan: &str,
    inputs: &HashMap<String, Tensor>,
    extra: &[&str],
) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let dir = tempfile::tempdir().unwrap();
    let inputs = save(dir.path(), "in.safetensors", inputs);
    let (one, two) = (
        dir.path().join("one.safetensors"),
        dir.path().join("two.safetensors"),
    );
    let model = fixture(name);
    let args = |out: &Path| {
        let mut a = vec![
            "forward".to_string(),
            model.to_str().unwrap().to_string(),
            "--inputs".into(),
            inputs.to_str().unwrap().to_string(),
            "--out".into(),
            out.to_str().unwrap().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let a = args(&one);
    stdout(&patchwork(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let mut b = args(&two);
    b.extend(["--parallel".to_string(), plan.to_string()]);
    let out = mpirun(
        ranks,
        bin(),
        &b.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        out.status.success(),
        "mpirun -n {ranks} patchwork forward --parallel {plan} on {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (load(&one), load(&two))
}

/// Every tensor of `one` in `two`, the same within [`SAME`] (integers exactly), and no other.
fn assert_same(what: &str, one: &HashMap<String, Tensor>, two: &HashMap<String, Tensor>) {
    let mut keys: Vec<&String> = one.keys().collect();
    keys.sort();
    let mut theirs: Vec<&String> = two.keys().collect();
    theirs.sort();
    assert_eq!(keys, theirs, "{what}: the same tensors written");
    for key in keys {
        let (a, b) = (&one[key], &two[key]);
        if a.dtype().is_int() {
            let a: Vec<i64> = a
                .to_dtype(DType::I64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let b: Vec<i64> = b
                .to_dtype(DType::I64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(a, b, "{what}: {key}");
        } else {
            assert_close_where(b, a, SAME, &format!("{what}: {key}"), |_| true);
        }
    }
}

/// The training fixture's ids and labels, the second row left-padded by two positions.
fn training_inputs(name: &str) -> HashMap<String, Tensor> {
    let r = training_reference(name);
    let ids = &r["input_ids"];
    let (rows, len) = ids.dims2().unwrap();
    let mut mask = vec![1u8; rows * len];
    mask[len] = 0;
    mask[len + 1] = 0;
    HashMap::from([
        ("input_ids".to_string(), ids.clone()),
        ("labels".to_string(), r["labels"].clone()),
        (
            "attention_mask".to_string(),
            Tensor::from_vec(mask, (rows, len), &Device::Cpu).unwrap(),
        ),
    ])
}

#[test]
fn tensor_parallel_forward_and_gradients_equal_one_process() {
    // On the MoE fixtures tp splits the routed experts too (transformers' `moe_tp_experts`).
    for name in [
        "llama-tiny",
        "qwen3-tiny",
        "qwen2-tiny",
        "qwen2-moe-tiny",
        "qwen3-moe-tiny",
    ] {
        let (one, two) = forward_both(name, "tp", &training_inputs(name), &["--grads"]);
        assert!(two.keys().any(|k| k.starts_with("grad.")) && two.contains_key("loss"));
        assert_same(&format!("{name} tp"), &one, &two);
    }
}

#[test]
fn key_value_heads_fewer_than_ranks_are_replicated() {
    // 4 ranks, 4 query heads, 2 key/value heads: each pair of ranks shares one key/value
    // head, whose gradient is the sum of the pair's.
    for name in ["llama-tiny", "qwen3-tiny"] {
        let (one, four) = forward_both_on(4, name, "tp", &training_inputs(name), &["--grads"]);
        assert_same(&format!("{name} tp on 4 ranks"), &one, &four);
    }
}

#[test]
fn expert_parallel_forward_gradients_and_routing_equal_one_process() {
    for name in ["qwen3-moe-tiny", "qwen2-moe-tiny"] {
        for plan in ["ep", "tp+ep"] {
            let (one, two) = forward_both(name, plan, &training_inputs(name), &["--grads"]);
            assert!(two.contains_key("router_logits.0") && two.contains_key("aux_loss"));
            assert_same(&format!("{name} {plan}"), &one, &two);
        }
    }
}

#[test]
fn replayed_routing_under_expert_parallel_equals_one_process() {
    let name = "qwen3-moe-tiny";
    let r = training_reference(name);
    let dir = tempfile::tempdir().unwrap();
    let forced: HashMap<String, Tensor> = r
        .iter()
        .filter_map(|(k, v)| {
            let l = k.strip_prefix("replay_experts.")?;
            Some((format!("selected_experts.{l}"), v.clone()))
        })
        .collect();
    assert!(!forced.is_empty());
    let routing = save(dir.path(), "routing.safetensors", &forced);
    let extra = ["--grads", "--forced-experts", routing.to_str().unwrap()];
    let (one, two) = forward_both(name, "ep", &training_inputs(name), &extra);
    for (key, want) in &forced {
        let got: Vec<i64> = two[key].flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<i64> = want
            .to_dtype(DType::I64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, want, "{key}: the replayed routing is what ran");
    }
    assert_same("replay ep", &one, &two);
}

#[test]
fn greedy_generation_equals_one_process() {
    for (name, plan) in [
        ("llama-tiny", "tp"),
        ("qwen3-moe-tiny", "ep"),
        ("qwen2-moe-tiny", "tp+ep"),
    ] {
        let model = fixture(name);
        let args = [
            "generate",
            model.to_str().unwrap(),
            "--prompt-ids",
            "1,5,9,13,200,7",
            "--max-new-tokens",
            "10",
            "--ignore-eos",
        ];
        let one = stdout(&patchwork(&args));
        let mut parallel = args.to_vec();
        parallel.extend(["--parallel", plan]);
        let out = mpirun(2, bin(), &parallel);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let two = String::from_utf8(out.stdout).unwrap();
        let last = |s: &str| s.lines().last().unwrap_or_default().to_string();
        assert_eq!(last(&two), last(&one), "{name} {plan}");
        // Rank 0 alone prints: one line of ids, not two.
        assert_eq!(two.lines().count(), one.lines().count(), "{two}");
    }
}

#[test]
fn bench_runs_split_and_rank_0_alone_reports() {
    let model = fixture("qwen3-moe-tiny");
    let args = [
        "bench",
        model.to_str().unwrap(),
        "--prompt-len",
        "8",
        "--decode",
        "4",
        "--repeats",
        "1",
        "--parallel",
        "tp+ep",
    ];
    let out = mpirun(2, bin(), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("prefill_tok_s=").count(), 1, "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap_or_default()
            .starts_with("prefill_tok_s="),
        "{text}"
    );
}

#[test]
fn inspect_shows_each_split_and_what_stays_whole() {
    let model = fixture("qwen2-moe-tiny");
    let args = ["inspect", model.to_str().unwrap(), "--parallel", "tp"];
    let out = mpirun(2, bin(), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.matches("parameters: ").count(),
        1,
        "rank 0 alone prints: {text}"
    );
    // The whole model's parameter count, not one rank's.
    let one = stdout(&patchwork(&args[..2]));
    let count = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("parameters: "))
            .map(str::to_string)
    };
    assert_eq!(count(&text), count(&one));
    for line in [
        "query heads 0..2 of 4, key/value heads 0..2 of 4 (rank 0 of 2, mpi)",
        "column-parallel: output rows 0..32 of 64",
        "row-parallel: input columns 0..64 of 128",
        "intermediate 0..16 of 32 in each of 8 experts",
        "not split: base_model_tp_plan has no entry for its projections",
        "vocabulary-parallel: rows 0..128 of 256",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
}

/// `generate MODEL --prompt-ids 1,2 --max-new-tokens 1`, then `extra`.
fn one_token(model: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["generate", model.to_str().unwrap()]
        .iter()
        .chain(&["--prompt-ids", "1,2", "--max-new-tokens", "1"])
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn sizes_that_do_not_divide_are_errors_naming_the_key() {
    let tp = one_token(&fixture("llama-tiny"), &["--parallel", "tp"]);
    let out = mpirun(3, bin(), &strs(&tp));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("num_attention_heads = 4 does not divide across 3 ranks"),
        "{err}"
    );
    let ep = one_token(&fixture("qwen3-moe-tiny"), &["--parallel", "ep"]);
    let out = mpirun(3, bin(), &strs(&ep));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("num_experts = 16 does not divide across 3 ranks"),
        "{err}"
    );
}

#[test]
fn without_a_launcher_or_with_an_unknown_plan_the_error_says_so() {
    let model = fixture("llama-tiny");
    let out = patchwork(&strs(&one_token(&model, &["--parallel", "tp"])));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not started by an MPI launcher") && err.contains("mpirun -n 2"),
        "{err}"
    );
    let bad = one_token(&model, &["--parallel", "dp"]);
    let err = String::from_utf8_lossy(&patchwork(&strs(&bad)).stderr).to_string();
    assert!(err.contains("unknown parallel plan \"dp\""), "{err}");
}

#[test]
fn a_rank_that_fails_ends_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let good = training_inputs("llama-tiny");
    // Ids past the vocabulary: this rank fails in the forward pass, after loading, while the
    // other waits in a collective.
    let mut bad = good.clone();
    bad.insert(
        "input_ids".into(),
        Tensor::full(100_000u32, good["input_ids"].dims(), &Device::Cpu).unwrap(),
    );
    let good = save(dir.path(), "good.safetensors", &good);
    let bad = save(dir.path(), "bad.safetensors", &bad);
    let out = dir.path().join("out.safetensors");
    let model = fixture("llama-tiny");
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then IN={bad}; else IN={good}; fi; exec {bin} forward {model} --inputs \"$IN\" --out {out} --parallel tp",
        bad = bad.display(),
        good = good.display(),
        bin = bin(),
        model = model.display(),
        out = out.display(),
    );
    let result = mpirun(2, "sh", &["-c", &script]);
    assert!(!result.status.success());
    let err = String::from_utf8_lossy(&result.stderr);
    assert!(err.contains("rank 1 of 2"), "{err}");
    assert!(!out.exists(), "no output from a failed run");
    // A rank that exits before it joins: the launcher ends the job.
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then exit 3; fi; exec {bin} forward {model} --inputs {good} --out {out} --parallel tp",
        bin = bin(),
        model = model.display(),
        good = good.display(),
        out = out.display(),
    );
    let result = mpirun(2, "sh", &["-c", &script]);
    assert!(!result.status.success());
}
