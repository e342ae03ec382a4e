//! The CLI from text and by Hub id: prompts encoded as the Python library encodes them, text
//! streamed before the id line, chat templates, Hub caches built here (CI has no network),
//! logs, devices and `--dtype auto`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use patchwork_text::TextTokenizer;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn patchwork(args: &[&str], env: &[(&str, &Path)], cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchwork"));
    cmd.args(args)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HOME")
        .env_remove("RUST_LOG")
        .env("HF_HUB_OFFLINE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8(out.stdout.clone()).unwrap(),
        String::from_utf8(out.stderr.clone()).unwrap(),
    );
    assert!(out.status.success(), "failed: {stderr}");
    (stdout, stderr)
}

fn failed(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn reference() -> Value {
    serde_json::from_slice(
        &std::fs::read(fixture("llama-tiny").join("tokenizer_reference.json")).unwrap(),
    )
    .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn id_line(stdout: &str) -> Vec<u32> {
    stdout
        .lines()
        .last()
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn a_text_prompt_streams_text_then_the_id_line() {
    let llama = fixture("llama-tiny");
    let (stdout, _) = ok(&patchwork(
        &[
            "generate",
            llama.to_str().unwrap(),
            "--prompt",
            "Hello, world!",
            "--max-new-tokens",
            "8",
            "--ignore-eos",
        ],
        &[],
        None,
    ));
    let reference = reference();
    let prompt = ids(&reference["cases"][0]["ids"]);
    assert_eq!(reference["cases"][0]["text"], "Hello, world!");
    let sequence = id_line(&stdout);
    assert_eq!(&sequence[..prompt.len()], prompt.as_slice());
    assert_eq!(sequence.len(), prompt.len() + 8);
    let tok = TextTokenizer::from_dir(&llama).unwrap();
    let text = tok.decode(&sequence[prompt.len()..], true).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout:?}");
    assert_eq!(lines[0], text);
    // The same ids through --prompt-ids: the tokenizer still streams their text.
    let joined: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let (by_ids, _) = ok(&patchwork(
        &[
            "generate",
            llama.to_str().unwrap(),
            "--prompt-ids",
            &joined.join(","),
            "--max-new-tokens",
            "8",
            "--ignore-eos",
        ],
        &[],
        None,
    ));
    assert_eq!(by_ids, stdout);
}

#[test]
fn chat_prompts_render_the_template_as_transformers_does() {
    let llama = fixture("llama-tiny");
    let chat = &reference()["chat"];
    assert_eq!(chat["messages"][0]["content"], "You are tiny.");
    let (stdout, _) = ok(&patchwork(
        &[
            "generate",
            llama.to_str().unwrap(),
            "--chat",
            "--system",
            "You are tiny.",
            "--prompt",
            "What is your name?",
            "--max-new-tokens",
            "3",
            "--ignore-eos",
        ],
        &[],
        None,
    ));
    let want = ids(&chat["ids"]);
    assert_eq!(&id_line(&stdout)[..want.len()], want.as_slice());
    let e = failed(&patchwork(
        &[
            "generate",
            fixture("qwen2-moe-tiny").to_str().unwrap(),
            "--prompt",
            "hi",
            "--max-new-tokens",
            "1",
        ],
        &[],
        None,
    ));
    assert!(
        e.contains("qwen2-moe-tiny has no tokenizer.json; give --prompt-ids instead"),
        "{e}"
    );
}

const MAIN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const V1: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A Hub cache at `root` holding `org/tiny`: llama-tiny at `main`, qwen3-tiny at `v1`, each
/// file a link to a blob as the Hub client lays them out.
fn hub_cache(root: &Path) {
    let repo = root.join("models--org--tiny");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), MAIN).unwrap();
    std::fs::write(repo.join("refs/v1"), V1).unwrap();
    for (commit, source) in [(MAIN, "llama-tiny"), (V1, "qwen3-tiny")] {
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        for file in ["config.json", "model.safetensors"] {
            let blob = repo.join("blobs").join(format!("{source}-{file}"));
            std::fs::copy(fixture(source).join(file), &blob).unwrap();
            #[cfg(unix)]
            std::os::unix::fs::symlink(&blob, snapshot.join(file)).unwrap();
            #[cfg(not(unix))]
            std::fs::copy(&blob, snapshot.join(file)).unwrap();
        }
    }
}

#[test]
fn hub_ids_resolve_through_the_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    hub_cache(&cache);
    let (stdout, _) = ok(&patchwork(
        &["inspect", "org/tiny"],
        &[("HF_HUB_CACHE", &cache)],
        None,
    ));
    assert!(stdout.starts_with("model_type: llama\n"), "{stdout}");
    // HF_HOME/hub is the cache when HF_HUB_CACHE is unset.
    let (stdout, _) = ok(&patchwork(
        &["inspect", "org/tiny", "--revision", "v1"],
        &[("HF_HOME", tmp.path())],
        None,
    ));
    assert!(stdout.starts_with("model_type: qwen3\n"), "{stdout}");
    let (stdout, _) = ok(&patchwork(
        &[
            "generate",
            "org/tiny",
            "--revision",
            V1,
            "--prompt-ids",
            "1,2",
            "--max-new-tokens",
            "1",
        ],
        &[("HF_HUB_CACHE", &cache)],
        None,
    ));
    assert_eq!(id_line(&stdout).len(), 3);
    let e = failed(&patchwork(
        &["inspect", "org/other"],
        &[("HF_HUB_CACHE", &cache)],
        None,
    ));
    assert!(
        e.contains("Hub id \"org/other\" (revision \"main\") is not in the cache at"),
        "{e}"
    );
    assert!(e.contains(&cache.display().to_string()), "{e}");
    assert!(e.contains("offline"), "{e}");
    // A folder named like the id wins over the cache.
    let cwd = tmp.path().join("work");
    std::fs::create_dir_all(cwd.join("org/tiny")).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(
            fixture("qwen3-tiny").join(file),
            cwd.join("org/tiny").join(file),
        )
        .unwrap();
    }
    let (stdout, _) = ok(&patchwork(
        &["inspect", "org/tiny"],
        &[("HF_HUB_CACHE", &cache)],
        Some(&cwd),
    ));
    assert!(stdout.starts_with("model_type: qwen3\n"), "{stdout}");
    // resave reads a Hub id too.
    let out = tmp.path().join("saved");
    ok(&patchwork(
        &["resave", "org/tiny", out.to_str().unwrap()],
        &[("HF_HUB_CACHE", &cache)],
        None,
    ));
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn logs_come_with_v_and_never_without() {
    let llama = fixture("llama-tiny");
    let (_, quiet) = ok(&patchwork(&["inspect", llama.to_str().unwrap()], &[], None));
    assert!(quiet.is_empty(), "{quiet}");
    let (_, loud) = ok(&patchwork(
        &["-v", "inspect", llama.to_str().unwrap()],
        &[],
        None,
    ));
    assert!(
        loud.contains("INFO") && loud.contains("load{model=") && loud.contains("loaded tensors=20"),
        "{loud}"
    );
    assert!(!loud.contains('\u{1b}'), "no colours in a pipe: {loud:?}");
}

#[test]
fn devices_and_auto_dtype() {
    let llama = fixture("llama-tiny");
    let dir = llama.to_str().unwrap();
    let e = failed(&patchwork(&["inspect", dir, "--device", "tpu"], &[], None));
    assert!(
        e.contains("--device tpu: unknown device (cpu, cuda, cuda:N, metal or metal:N)"),
        "{e}"
    );
    if !cfg!(feature = "cuda") {
        let e = failed(&patchwork(
            &["inspect", dir, "--device", "cuda:0"],
            &[],
            None,
        ));
        assert!(
            e.contains(
                "--device cuda:0: this build has no CUDA support (build with `--features cuda`)"
            ),
            "{e}"
        );
    }
    let (stdout, _) = ok(&patchwork(
        &["inspect", dir, "--dtype", "auto", "--device", "cpu"],
        &[],
        None,
    ));
    assert!(stdout.contains("\ncompute_dtype: float32\n"), "{stdout}");
    let tmp = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(llama.join(file), tmp.path().join(file)).unwrap();
    }
    let path = tmp.path().join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["torch_dtype"] = "bfloat16".into();
    std::fs::write(&path, config.to_string()).unwrap();
    let (stdout, _) = ok(&patchwork(
        &["inspect", tmp.path().to_str().unwrap(), "--dtype", "auto"],
        &[],
        None,
    ));
    assert!(stdout.contains("\ncompute_dtype: bfloat16\n"), "{stdout}");
    config["torch_dtype"] = "int8".into();
    std::fs::write(&path, config.to_string()).unwrap();
    let e = failed(&patchwork(
        &["inspect", tmp.path().to_str().unwrap(), "--dtype", "auto"],
        &[],
        None,
    ));
    assert!(
        e.contains("key \"torch_dtype\": \"int8\" is not a float dtype"),
        "{e}"
    );
}
