//! Hostile input against the `patchwork` binary: malformed checkpoints, configs, input files
//! and flags, generated here from the reference fixtures (nothing large is committed).
//!
//! Each case states its exact outcome: an error (exit 1) whose message holds the fragments
//! that name the file, key or value at fault, or a success with the right output; in every
//! case no panic, no hang (a deadline kills the process), no temporary left behind, and no
//! file that existed before changed afterwards, outputs excepted.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

/// What a run did.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` and `env`, killed after 60 s (a hang fails the case).
fn run(args: &[String], env: &[(&str, &str)]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("patchwork {args:?} hung (killed after 60 s)");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        code: status.code(),
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// Every entry under `dir` (links not followed): its kind and, for files, its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = meta.file_type();
            let value = if kind.is_symlink() {
                (
                    "link".to_string(),
                    std::fs::read_link(&path)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                        .into_bytes(),
                )
            } else if kind.is_dir() {
                stack.push(path.clone());
                ("dir".to_string(), Vec::new())
            } else if kind.is_file() {
                ("file".to_string(), std::fs::read(&path).unwrap())
            } else {
                (format!("{kind:?}"), Vec::new())
            };
            out.insert(path, value);
        }
    }
    out
}

/// A case's workspace: a temporary folder with copies of the fixtures it mutates.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// A copy of fixture `name` (config and weights only) at `to`.
    fn checkpoint(&self, name: &str, to: &str) -> PathBuf {
        let dst = self.path(to);
        std::fs::create_dir_all(&dst).unwrap();
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture(name).join(file), dst.join(file)).unwrap();
        }
        dst
    }

    /// A checkpoint copy with its config edited.
    fn config_edit(&self, name: &str, to: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let dst = self.checkpoint(name, to);
        let path = dst.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(&path, config.to_string()).unwrap();
        dst
    }
}

/// The raw safetensors bytes of `tensors` (name, dtype, shape, data), in order.
fn safetensors_bytes(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}),
        );
        offset += data.len();
    }
    let text = Value::Object(header).to_string();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    for (_, _, _, data) in tensors {
        bytes.extend_from_slice(data);
    }
    bytes
}

/// An inputs file holding `input_ids` `[1, n]` (i64) of deterministic ids below 256.
fn input_ids(n: usize) -> Vec<u8> {
    let ids: Vec<u8> = (0..n)
        .flat_map(|i| (((i * 31 + 7) % 256) as i64).to_le_bytes())
        .collect();
    safetensors_bytes(&[("input_ids", "I64", vec![1, n], ids)])
}

/// The header of a safetensors file: the JSON and where the data starts.
fn header_of(bytes: &[u8]) -> (Value, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), 8 + n)
}

/// Rewrites a checkpoint file with one tensor's bytes replaced by `edit`'s (same length).
fn patch_tensor(path: &Path, name: &str, edit: impl FnOnce(&mut [u8])) {
    let mut bytes = std::fs::read(path).unwrap();
    let (header, start) = header_of(&bytes);
    let offsets = &header[name]["data_offsets"];
    let (a, b) = (
        offsets[0].as_u64().unwrap() as usize,
        offsets[1].as_u64().unwrap() as usize,
    );
    edit(&mut bytes[start + a..start + b]);
    std::fs::write(path, bytes).unwrap();
}

/// Rewrites a checkpoint file's header with `edit` (data kept as is).
fn patch_header(path: &Path, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(path).unwrap();
    let (mut header, start) = header_of(&bytes);
    edit(&mut header);
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[start..]);
    std::fs::write(path, out).unwrap();
}

/// A case: what to run, in which workspace, and what must come of it.
struct Case {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    /// `Err(fragments)`: exit 1 with each fragment in stderr; `Ok(fragments)`: exit 0 with
    /// each in stdout.
    expect: Result<Vec<String>, Vec<String>>,
    /// Paths the run may create or change.
    outputs: Vec<PathBuf>,
}

fn fails(name: &'static str, args: Vec<String>, fragments: &[&str]) -> Case {
    Case {
        name,
        args,
        env: Vec::new(),
        expect: Err(fragments.iter().map(|s| s.to_string()).collect()),
        outputs: Vec::new(),
    }
}

fn succeeds(name: &'static str, args: Vec<String>, fragments: &[&str]) -> Case {
    Case {
        name,
        args,
        env: Vec::new(),
        expect: Ok(fragments.iter().map(|s| s.to_string()).collect()),
        outputs: Vec::new(),
    }
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Runs `case` in `ws`, checking its outcome and that nothing but its outputs changed.
fn check(ws: &Workspace, case: Case) {
    let before = snapshot(ws.dir.path());
    let out = run(&case.args, &case.env);
    let name = case.name;
    assert!(
        !out.stderr.contains("panicked"),
        "{name}: panicked\n{}",
        out.stderr
    );
    match &case.expect {
        Err(fragments) => {
            assert_eq!(out.code, Some(1), "{name}: exit status\n{}", out.stderr);
            for f in fragments {
                assert!(
                    out.stderr.contains(f.as_str()),
                    "{name}: stderr lacks {f:?}\n{}",
                    out.stderr
                );
            }
        }
        Ok(fragments) => {
            assert_eq!(out.code, Some(0), "{name}: failed\n{}", out.stderr);
            for f in fragments {
                assert!(
                    out.stdout.contains(f.as_str()),
                    "{name}: stdout lacks {f:?}\n{}",
                    out.stdout
                );
            }
        }
    }
    let after = snapshot(ws.dir.path());
    for (path, value) in &before {
        if case.outputs.contains(path) {
            continue;
        }
        assert!(
            after.get(path) == Some(value),
            "{name}: {} changed",
            path.display()
        );
    }
    for path in after.keys() {
        let tmp = path.to_string_lossy().ends_with(".tmp");
        assert!(!tmp, "{name}: temporary {} left behind", path.display());
        assert!(
            before.contains_key(path) || case.outputs.iter().any(|o| path.starts_with(o)),
            "{name}: {} appeared",
            path.display()
        );
    }
}

#[test]
fn config_sizes_are_checked_before_anything_is_built() {
    let ws = Workspace::new();
    let mut cases = Vec::new();
    for (key, value, fragments) in [
        (
            "num_hidden_layers",
            json!(10_000_000),
            vec![
                "key \"num_hidden_layers\"",
                "10000000 is over the limit of 4096",
            ],
        ),
        (
            "num_hidden_layers",
            json!(1_000_000_000_000_000_000u64),
            vec!["key \"num_hidden_layers\"", "1000000000000000000"],
        ),
        (
            "num_hidden_layers",
            json!(3),
            vec![
                "key \"num_hidden_layers\"",
                "is 3, but the checkpoint stores layers 0..=1 only",
            ],
        ),
        (
            "head_dim",
            json!(1_000_000_000),
            vec!["key \"head_dim\"", "1000000000 is over the limit"],
        ),
        (
            "head_dim",
            json!(32),
            vec![
                "key \"head_dim\"",
                "num_attention_heads 4 x head_dim 32 = 128, but model.layers.0.self_attn.q_proj.weight has shape [64, 64]",
            ],
        ),
        (
            "intermediate_size",
            json!(1_000_000_000_000u64),
            vec![
                "key \"intermediate_size\"",
                "1000000000000 is over the limit",
            ],
        ),
        (
            "intermediate_size",
            json!(4096),
            vec![
                "key \"intermediate_size\"",
                "is 4096, but model.layers.0.mlp.gate_proj.weight has shape [160, 64]",
            ],
        ),
        (
            "hidden_size",
            json!(1 << 19),
            vec![
                "key \"hidden_size\"",
                "is 524288, but model.embed_tokens.weight has shape [256, 64]",
            ],
        ),
        (
            "vocab_size",
            json!(1u64 << 40),
            vec![
                "key \"vocab_size\"",
                "1099511627776 is over the limit of 16777216",
            ],
        ),
        (
            "vocab_size",
            json!(0),
            vec!["key \"vocab_size\"", "must be at least 1, found 0"],
        ),
        (
            "num_key_value_heads",
            json!(3),
            vec![
                "key \"num_key_value_heads\"",
                "3 does not divide num_attention_heads = 4",
            ],
        ),
        (
            "max_position_embeddings",
            json!(-1),
            vec![
                "key \"max_position_embeddings\"",
                "invalid value: integer `-1`",
            ],
        ),
        (
            "rms_norm_eps",
            json!("tiny"),
            vec!["key \"rms_norm_eps\"", "invalid type: string \"tiny\""],
        ),
        (
            "model_type",
            json!("gpt9"),
            vec!["model_type \"gpt9\" is not a linked model family"],
        ),
        (
            "eos_token_id",
            json!(256),
            vec![
                "key \"eos_token_id\"",
                "token id 256 is not below vocab_size 256",
            ],
        ),
    ] {
        let dir = ws.config_edit("llama-tiny", &format!("{key}-{value}"), |c| {
            c[key] = value.clone()
        });
        let config = dir.join("config.json").display().to_string();
        let mut want = vec![config.as_str()];
        want.extend(fragments);
        cases.push(fails(
            "config size",
            args(&["inspect", &dir.display().to_string()]),
            &want,
        ));
    }
    let moe = ws.config_edit("qwen2-moe-tiny", "experts", |c| {
        c["num_experts"] = json!(1u64 << 30)
    });
    cases.push(fails(
        "num_experts",
        args(&["inspect", &moe.display().to_string()]),
        &[
            "key \"num_experts\"",
            "1073741824 is over the limit of 65536",
        ],
    ));
    let moe = ws.config_edit("qwen2-moe-tiny", "experts-wrong", |c| {
        c["moe_intermediate_size"] = json!(1 << 20)
    });
    cases.push(fails(
        "moe_intermediate_size",
        args(&["inspect", &moe.display().to_string()]),
        &[
            "describe",
            "parameters, but the checkpoint stores",
            "the config does not describe these weights",
        ],
    ));
    let not_object = ws.checkpoint("llama-tiny", "array-config");
    std::fs::write(not_object.join("config.json"), "[1, 2]").unwrap();
    cases.push(fails(
        "config not an object",
        args(&["inspect", &not_object.display().to_string()]),
        &["config.json", "expected a JSON object"],
    ));
    let bad_json = ws.checkpoint("llama-tiny", "bad-json");
    std::fs::write(bad_json.join("config.json"), "{\"vocab_size\": 256,").unwrap();
    cases.push(fails(
        "config not JSON",
        args(&["inspect", &bad_json.display().to_string()]),
        &["config.json: invalid JSON", "EOF while parsing"],
    ));
    for case in cases {
        check(&ws, case);
    }
}

#[test]
fn lengths_are_bounded_by_the_model_and_by_memory() {
    let ws = Workspace::new();
    let llama = fixture("llama-tiny").display().to_string();
    std::fs::write(ws.path("600.safetensors"), input_ids(600)).unwrap();
    std::fs::write(ws.path("8000.safetensors"), input_ids(8000)).unwrap();
    let out = ws.path("out.safetensors");
    let cases = vec![
        fails(
            "max-new-tokens 1e9",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5,6",
                "--max-new-tokens",
                "1000000000",
            ]),
            &[
                "a prompt of 2 tokens and max_new_tokens = 1000000000 reaches 1000000002 positions, past the 512",
            ],
        ),
        fails(
            "max-new-tokens usize::MAX",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5,6",
                "--max-new-tokens",
                &usize::MAX.to_string(),
            ]),
            &["reaches more than 2^64 positions, past the 512"],
        ),
        fails(
            "600 tokens against 512",
            args(&[
                "forward",
                &llama,
                "--inputs",
                &ws.arg("600.safetensors"),
                "--out",
                &ws.arg("out.safetensors"),
            ]),
            &[
                "a pass of 600 tokens after 0 cached positions reaches 600 positions, past the 512",
                "--max-positions",
            ],
        ),
        fails(
            "max-positions 0",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5",
                "--max-new-tokens",
                "1",
                "--max-positions",
                "0",
            ]),
            &["input max_positions: 0 is not in 1..="],
        ),
        fails(
            "prompt past the limit in bench",
            args(&[
                "bench",
                &llama,
                "--prompt-len",
                "1000000000000",
                "--decode",
                "1",
            ]),
            &["--prompt-len 1000000000000 and --decode 1 reach past the 512 positions"],
        ),
        fails(
            "attention probabilities of 8000 tokens",
            args(&[
                "forward",
                &llama,
                "--inputs",
                &ws.arg("8000.safetensors"),
                "--out",
                &ws.arg("out.safetensors"),
                "--max-positions",
                "8000",
                "--output-attentions",
            ]),
            &[
                "the attention probabilities of 8000 queries over 8000 keys",
                "needs",
                "is available",
            ],
        ),
    ];
    for mut case in cases {
        case.env.push(("PATCHWORK_MEMORY_LIMIT", "2G"));
        check(&ws, case);
    }
    // A long pass the model allows runs in bounded memory: the attention mask is never an
    // 8000 x 8000 buffer (256 MB), so a 160 MiB limit is enough.
    let mut long = succeeds(
        "8000 tokens with --max-positions",
        args(&[
            "forward",
            &llama,
            "--inputs",
            &ws.arg("8000.safetensors"),
            "--out",
            &ws.arg("out.safetensors"),
            "--max-positions",
            "8000",
        ]),
        &[],
    );
    long.env.push(("PATCHWORK_MEMORY_LIMIT", "160M"));
    long.outputs.push(out.clone());
    check(&ws, long);
    let logits = patch_checkpoint::read_safetensors(&out, &candle_core::Device::Cpu).unwrap();
    assert_eq!(logits["logits"].dims(), &[1, 8000, 256]);
}

#[cfg(unix)]
#[test]
fn writes_are_atomic_and_never_follow_links_or_replace_inputs() {
    let ws = Workspace::new();
    let llama = ws.checkpoint("llama-tiny", "llama");
    let llama_arg = llama.display().to_string();
    std::fs::write(ws.path("in.safetensors"), input_ids(4)).unwrap();
    std::fs::write(ws.path("outside.json"), "keep me").unwrap();
    let mut cases = vec![
        fails(
            "--out is --inputs",
            args(&[
                "forward",
                &llama_arg,
                "--inputs",
                &ws.arg("in.safetensors"),
                "--out",
                &ws.arg("in.safetensors"),
            ]),
            &[
                "in.safetensors: is also an input",
                "refusing to overwrite what is being read",
            ],
        ),
        fails(
            "--out is a checkpoint file",
            args(&[
                "forward",
                &llama_arg,
                "--inputs",
                &ws.arg("in.safetensors"),
                "--out",
                &llama.join("model.safetensors").display().to_string(),
            ]),
            &["model.safetensors: is also an input"],
        ),
        fails(
            "--out is a device",
            args(&[
                "forward",
                &llama_arg,
                "--inputs",
                &ws.arg("in.safetensors"),
                "--out",
                "/dev/null",
            ]),
            &["/dev/null: is a device: refusing to replace it with a file"],
        ),
        fails(
            "--out is a folder",
            args(&[
                "forward",
                &llama_arg,
                "--inputs",
                &ws.arg("in.safetensors"),
                "--out",
                &ws.arg("llama"),
            ]),
            &["is a folder: refusing to replace it"],
        ),
        fails(
            "resave onto itself",
            args(&["resave", &llama_arg, &llama_arg]),
            &["is the checkpoint the weights are read from"],
        ),
    ];
    std::os::unix::fs::symlink(ws.path("in.safetensors"), ws.path("link.safetensors")).unwrap();
    cases.push(fails(
        "--out is a link",
        args(&[
            "forward",
            &llama_arg,
            "--inputs",
            &ws.arg("in.safetensors"),
            "--out",
            &ws.arg("link.safetensors"),
        ]),
        &["link.safetensors: is a symbolic link: refusing to write through it"],
    ));
    // A destination whose config.json links out of it: nothing is written, the link's target
    // keeps its bytes.
    std::fs::create_dir(ws.path("dst")).unwrap();
    std::fs::write(ws.path("dst/model.safetensors"), b"old weights").unwrap();
    std::os::unix::fs::symlink(ws.path("outside.json"), ws.path("dst/config.json")).unwrap();
    cases.push(fails(
        "resave through a linked config.json",
        args(&["resave", &llama_arg, &ws.arg("dst")]),
        &["dst/config.json: is a symbolic link"],
    ));
    // A destination where a shard's name is a folder: refused before any file is written.
    std::fs::create_dir_all(ws.path("dst2/model.safetensors")).unwrap();
    std::fs::write(ws.path("dst2/config.json"), b"old config").unwrap();
    cases.push(fails(
        "resave onto a folder named like a shard",
        args(&["resave", &llama_arg, &ws.arg("dst2")]),
        &["dst2/model.safetensors: is a folder"],
    ));
    // A failure while writing (a tensor that cannot be read) leaves the old files as they were.
    let broken = ws.checkpoint("llama-tiny", "broken");
    patch_tensor(
        &broken.join("model.safetensors"),
        "model.norm.weight",
        |b| b[..4].copy_from_slice(&f32::NAN.to_le_bytes()),
    );
    std::fs::create_dir(ws.path("dst3")).unwrap();
    std::fs::write(ws.path("dst3/config.json"), b"old config").unwrap();
    cases.push(fails(
        "resave of a checkpoint that fails to load",
        args(&["resave", &broken.display().to_string(), &ws.arg("dst3")]),
        &[
            "model.norm.weight",
            "holds a NaN or infinite value (element 0 of shape [64])",
        ],
    ));
    for case in cases {
        check(&ws, case);
    }
    assert_eq!(std::fs::read(ws.path("outside.json")).unwrap(), b"keep me");
    // A good resave replaces the old files of a destination, and nothing else.
    std::fs::create_dir(ws.path("dst4")).unwrap();
    std::fs::write(ws.path("dst4/model-00001-of-00009.safetensors"), b"stale").unwrap();
    std::fs::write(ws.path("dst4/notes.txt"), b"mine").unwrap();
    let mut ok = succeeds(
        "resave",
        args(&["resave", &llama_arg, &ws.arg("dst4")]),
        &["wrote"],
    );
    ok.outputs = vec![
        ws.path("dst4/model-00001-of-00009.safetensors"),
        ws.path("dst4/model.safetensors"),
        ws.path("dst4/config.json"),
    ];
    check(&ws, ok);
    assert_eq!(std::fs::read(ws.path("dst4/notes.txt")).unwrap(), b"mine");
    assert!(!ws.path("dst4/model-00001-of-00009.safetensors").exists());
    let read =
        |p: PathBuf| patch_checkpoint::read_safetensors(p, &candle_core::Device::Cpu).unwrap();
    let (saved, original) = (
        read(ws.path("dst4/model.safetensors")),
        read(llama.join("model.safetensors")),
    );
    assert_eq!(
        saved.keys().collect::<Vec<_>>(),
        original.keys().collect::<Vec<_>>()
    );
    for (key, t) in &saved {
        let bits = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(bits(t), bits(&original[key]), "{key}");
    }
}

#[cfg(unix)]
#[test]
fn non_regular_files_are_refused_without_blocking() {
    let ws = Workspace::new();
    let fifo = |path: &Path| {
        let status = Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success());
    };
    let llama = fixture("llama-tiny").display().to_string();
    fifo(&ws.path("inputs.fifo"));
    let weights_fifo = ws.checkpoint("llama-tiny", "fifo-weights");
    std::fs::remove_file(weights_fifo.join("model.safetensors")).unwrap();
    fifo(&weights_fifo.join("model.safetensors"));
    let config_fifo = ws.checkpoint("llama-tiny", "fifo-config");
    std::fs::remove_file(config_fifo.join("config.json")).unwrap();
    fifo(&config_fifo.join("config.json"));
    let config_dev = ws.checkpoint("llama-tiny", "dev-config");
    std::fs::remove_file(config_dev.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", config_dev.join("config.json")).unwrap();
    let config_dir = ws.checkpoint("llama-tiny", "dir-config");
    std::fs::remove_file(config_dir.join("config.json")).unwrap();
    std::fs::create_dir(config_dir.join("config.json")).unwrap();
    let cases = vec![
        fails(
            "FIFO as --inputs",
            args(&[
                "forward",
                &llama,
                "--inputs",
                &ws.arg("inputs.fifo"),
                "--out",
                &ws.arg("o.safetensors"),
            ]),
            &["inputs.fifo: is a FIFO, not a regular file"],
        ),
        fails(
            "FIFO as model.safetensors",
            args(&["inspect", &weights_fifo.display().to_string()]),
            &["fifo-weights/model.safetensors: is a FIFO, not a regular file"],
        ),
        fails(
            "FIFO as config.json",
            args(&["inspect", &config_fifo.display().to_string()]),
            &["fifo-config/config.json: is a FIFO"],
        ),
        fails(
            "/dev/zero as config.json",
            args(&["inspect", &config_dev.display().to_string()]),
            &["dev-config/config.json: is a device"],
        ),
        fails(
            "a folder as config.json",
            args(&["inspect", &config_dir.display().to_string()]),
            &["dir-config/config.json: is a folder"],
        ),
        fails(
            "a missing folder",
            args(&["inspect", &ws.arg("nowhere")]),
            &["nowhere\": no such folder, and not a Hub id"],
        ),
    ];
    for case in cases {
        check(&ws, case);
    }
    // A sparse 300 MB config.json (in a workspace of its own: snapshots read every file):
    // refused by its length, never read.
    let ws = Workspace::new();
    let config_huge = ws.checkpoint("llama-tiny", "huge-config");
    std::fs::File::options()
        .write(true)
        .open(config_huge.join("config.json"))
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    check(
        &ws,
        fails(
            "a 300 MB config.json",
            args(&["inspect", &config_huge.display().to_string()]),
            &["huge-config/config.json: is 314572800 bytes long, over the 268435456-byte limit"],
        ),
    );
}

/// A llama-tiny copy sharded into two files with `extra` tiny tensors added to the second.
fn sharded_with_extra(ws: &Workspace, to: &str, extra: usize) -> PathBuf {
    let dst = ws.path(to);
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(
        fixture("llama-tiny").join("config.json"),
        dst.join("config.json"),
    )
    .unwrap();
    let original = std::fs::read(fixture("llama-tiny").join("model.safetensors")).unwrap();
    std::fs::write(dst.join("model-00001-of-00002.safetensors"), &original).unwrap();
    let names: Vec<String> = (0..extra).map(|i| format!("extra.{i}.weight")).collect();
    let tensors: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| (n.as_str(), "F32", vec![1], 1f32.to_le_bytes().to_vec()))
        .collect();
    std::fs::write(
        dst.join("model-00002-of-00002.safetensors"),
        safetensors_bytes(&tensors),
    )
    .unwrap();
    let (header, _) = header_of(&original);
    let mut map = serde_json::Map::new();
    for key in header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
    {
        map.insert(key.clone(), json!("model-00001-of-00002.safetensors"));
    }
    for n in &names {
        map.insert(n.clone(), json!("model-00002-of-00002.safetensors"));
    }
    std::fs::write(
        dst.join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    dst
}

#[test]
fn large_indexes_are_checked_in_linear_time() {
    let ws = Workspace::new();
    // 200,000 keys: the index check, the plan and the accounting stay linear (this took
    // over a minute when the index check was quadratic); the unused keys are one error with
    // a capped list.
    let dir = sharded_with_extra(&ws, "big", 200_000);
    let started = Instant::now();
    check(
        &ws,
        fails(
            "200,000 unused keys",
            args(&["inspect", &dir.display().to_string()]),
            &["unexpected  extra.0.weight", "and 199976 more"],
        ),
    );
    eprintln!("200,000-key index: {:.2?}", started.elapsed());
}

#[test]
fn garbage_is_never_output_with_success() {
    let ws = Workspace::new();
    let nan = ws.checkpoint("llama-tiny", "nan");
    patch_tensor(
        &nan.join("model.safetensors"),
        "model.layers.1.mlp.down_proj.weight",
        |b| b[40..44].copy_from_slice(&f32::INFINITY.to_le_bytes()),
    );
    let llama = fixture("llama-tiny").display().to_string();
    let greedy = run(
        &args(&[
            "generate",
            &llama,
            "--prompt-ids",
            "5,6,7",
            "--max-new-tokens",
            "6",
        ]),
        &[],
    );
    assert_eq!(greedy.code, Some(0), "{}", greedy.stderr);
    let greedy_ids = greedy.stdout.lines().last().unwrap().to_string();
    let cases = vec![
        fails(
            "an infinite weight",
            args(&[
                "generate",
                &nan.display().to_string(),
                "--prompt-ids",
                "5,6",
                "--max-new-tokens",
                "2",
            ]),
            &[
                "unreadable  model.layers.1.mlp.down_proj.weight",
                "holds a NaN or infinite value (element 10 of shape [64, 160])",
            ],
        ),
        succeeds(
            "temperature 1e-300 decodes greedily",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5,6,7",
                "--max-new-tokens",
                "6",
                "--temperature",
                "1e-300",
            ]),
            &[&greedy_ids],
        ),
        fails(
            "temperature 0",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5",
                "--max-new-tokens",
                "2",
                "--temperature",
                "0",
            ]),
            &["generation setting temperature = 0"],
        ),
        fails(
            "temperature NaN",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5",
                "--max-new-tokens",
                "2",
                "--temperature",
                "NaN",
            ]),
            &["generation setting temperature = NaN"],
        ),
        fails(
            "top-p 0",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5",
                "--max-new-tokens",
                "2",
                "--temperature",
                "1",
                "--top-p",
                "0",
            ]),
            &["generation setting top_p = 0"],
        ),
        fails(
            "a token past the vocabulary",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5,256",
                "--max-new-tokens",
                "2",
            ]),
            &["token id 256 at prompts[0, 1] is out of range: the vocabulary has 256 tokens"],
        ),
    ];
    for case in cases {
        check(&ws, case);
    }
}

#[test]
fn errors_name_the_file_the_tensor_and_the_place() {
    let ws = Workspace::new();
    let llama = ws.checkpoint("llama-tiny", "llama");
    let llama_arg = llama.display().to_string();
    let weights = fs_len(&llama.join("model.safetensors"));
    let mut cases = Vec::new();
    let truncated = ws.checkpoint("llama-tiny", "truncated");
    std::fs::File::options()
        .write(true)
        .open(truncated.join("model.safetensors"))
        .unwrap()
        .set_len(weights / 2)
        .unwrap();
    cases.push(fails(
        "a truncated file",
        args(&["inspect", &truncated.display().to_string()]),
        &[
            "truncated/model.safetensors: tensor",
            "reach past the",
            "the file is truncated",
        ],
    ));
    let huge_header = ws.checkpoint("llama-tiny", "huge-header");
    let mut bytes = std::fs::read(huge_header.join("model.safetensors")).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    std::fs::write(huge_header.join("model.safetensors"), bytes).unwrap();
    cases.push(fails(
        "a header length of 2^62",
        args(&["inspect", &huge_header.display().to_string()]),
        &["huge-header/model.safetensors: header length (bytes 0..8) is 4611686018427387904, over the 100000000-byte limit"],
    ));
    let bad_offsets = ws.checkpoint("llama-tiny", "bad-offsets");
    patch_header(&bad_offsets.join("model.safetensors"), |h| {
        h["model.norm.weight"]["shape"] = json!([65]);
    });
    cases.push(fails(
        "offsets that do not match the shape",
        args(&["inspect", &bad_offsets.display().to_string()]),
        &[
            "bad-offsets/model.safetensors: tensor \"model.norm.weight\"",
            "hold 256 bytes, but shape [65] of F32 needs 260",
        ],
    ));
    let overflow = ws.checkpoint("llama-tiny", "overflow");
    patch_header(&overflow.join("model.safetensors"), |h| {
        h["model.norm.weight"]["shape"] = json!([u64::MAX, u64::MAX]);
    });
    cases.push(fails(
        "a shape whose size overflows",
        args(&["inspect", &overflow.display().to_string()]),
        &[
            "tensor \"model.norm.weight\": shape",
            "has more elements than an address space holds",
        ],
    ));
    let int_norm = ws.checkpoint("llama-tiny", "int-norm");
    patch_header(&int_norm.join("model.safetensors"), |h| {
        h["model.norm.weight"]["dtype"] = json!("I32");
    });
    cases.push(fails(
        "an integer norm weight",
        args(&["inspect", &int_norm.display().to_string()]),
        &[
            "unreadable  model.norm.weight",
            "tensor \"model.norm.weight\" is stored as I32, but the model computes in F32",
        ],
    ));
    let unknown = ws.checkpoint("llama-tiny", "unknown-dtype");
    patch_header(&unknown.join("model.safetensors"), |h| {
        h["model.norm.weight"]["dtype"] = json!("Q4");
    });
    cases.push(fails(
        "an unknown dtype",
        args(&["inspect", &unknown.display().to_string()]),
        &["tensor \"model.norm.weight\": unknown dtype \"Q4\""],
    ));
    let unlisted = sharded_with_extra(&ws, "unlisted", 2);
    let index_path = unlisted.join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("extra.1.weight");
    std::fs::write(&index_path, index.to_string()).unwrap();
    cases.push(fails(
        "a key the index does not list",
        args(&["inspect", &unlisted.display().to_string()]),
        &[
            "model-00002-of-00002.safetensors: stores \"extra.1.weight\", which",
            "does not list for this shard",
        ],
    ));
    let absent = sharded_with_extra(&ws, "absent", 1);
    std::fs::remove_file(absent.join("model-00002-of-00002.safetensors")).unwrap();
    cases.push(fails(
        "a shard that does not exist",
        args(&["inspect", &absent.display().to_string()]),
        &[
            "absent/model-00002-of-00002.safetensors: cannot read",
            "caused by: No such file or directory",
        ],
    ));
    let escape = sharded_with_extra(&ws, "escape", 1);
    let index_path = escape.join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["weight_map"]["extra.0.weight"] = json!("../llama/model.safetensors");
    std::fs::write(&index_path, index.to_string()).unwrap();
    cases.push(fails(
        "an index pointing out of its folder",
        args(&["inspect", &escape.display().to_string()]),
        &["weight_map[\"extra.0.weight\"] = \"../llama/model.safetensors\" is not a file in this folder"],
    ));
    std::fs::write(
        ws.path("float-ids.safetensors"),
        safetensors_bytes(&[(
            "input_ids",
            "F32",
            vec![1, 2],
            [1f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
        )]),
    )
    .unwrap();
    cases.push(fails(
        "float input ids",
        args(&[
            "forward",
            &llama_arg,
            "--inputs",
            &ws.arg("float-ids.safetensors"),
            "--out",
            &ws.arg("o.safetensors"),
        ]),
        &["input input_ids"],
    ));
    std::fs::write(
        ws.path("big-id.safetensors"),
        safetensors_bytes(&[(
            "input_ids",
            "I64",
            vec![1, 2],
            [3i64, 999].iter().flat_map(|x| x.to_le_bytes()).collect(),
        )]),
    )
    .unwrap();
    cases.push(fails(
        "an input id past the vocabulary",
        args(&[
            "forward",
            &llama_arg,
            "--inputs",
            &ws.arg("big-id.safetensors"),
            "--out",
            &ws.arg("o.safetensors"),
        ]),
        &["token id 999 at input_ids[0, 1] is out of range"],
    ));
    std::fs::write(
        ws.path("garbage.safetensors"),
        b"not a safetensors file at all",
    )
    .unwrap();
    cases.push(fails(
        "garbage inputs",
        args(&[
            "forward",
            &llama_arg,
            "--inputs",
            &ws.arg("garbage.safetensors"),
            "--out",
            &ws.arg("o.safetensors"),
        ]),
        &["garbage.safetensors: header length (bytes 0..8) is"],
    ));
    for case in cases {
        check(&ws, case);
    }
}

fn fs_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}
