//! What every hostile-input test shares: running the binary under a deadline, workspaces of
//! fixture copies, malformed safetensors, and the check that a case did exactly what it states.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

/// What a run did.
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` and `env`, killed after 60 s (a hang fails the case).
pub fn run(args: &[String], env: &[(&str, &str)]) -> Outcome {
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
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, Vec<u8>)> {
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
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// A copy of fixture `name` (config and weights only) at `to`.
    pub fn checkpoint(&self, name: &str, to: &str) -> PathBuf {
        let dst = self.path(to);
        std::fs::create_dir_all(&dst).unwrap();
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture(name).join(file), dst.join(file)).unwrap();
        }
        dst
    }

    /// A checkpoint copy with its config edited.
    pub fn config_edit(&self, name: &str, to: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let dst = self.checkpoint(name, to);
        let path = dst.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(&path, config.to_string()).unwrap();
        dst
    }
}

/// The raw safetensors bytes of `tensors` (name, dtype, shape, data), in order.
pub fn safetensors_bytes(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
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
pub fn input_ids(n: usize) -> Vec<u8> {
    let ids: Vec<u8> = (0..n)
        .flat_map(|i| (((i * 31 + 7) % 256) as i64).to_le_bytes())
        .collect();
    safetensors_bytes(&[("input_ids", "I64", vec![1, n], ids)])
}

/// The header of a safetensors file: the JSON and where the data starts.
pub fn header_of(bytes: &[u8]) -> (Value, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), 8 + n)
}

/// Rewrites a checkpoint file with one tensor's bytes replaced by `edit`'s (same length).
pub fn patch_tensor(path: &Path, name: &str, edit: impl FnOnce(&mut [u8])) {
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
pub fn patch_header(path: &Path, edit: impl FnOnce(&mut Value)) {
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
pub struct Case {
    pub name: &'static str,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, &'static str)>,
    /// `Err(fragments)`: exit 1 with each fragment in stderr; `Ok(fragments)`: exit 0 with
    /// each in stdout.
    pub expect: Result<Vec<String>, Vec<String>>,
    /// Paths the run may create or change.
    pub outputs: Vec<PathBuf>,
}

pub fn fails(name: &'static str, args: Vec<String>, fragments: &[&str]) -> Case {
    Case {
        name,
        args,
        env: Vec::new(),
        expect: Err(fragments.iter().map(|s| s.to_string()).collect()),
        outputs: Vec::new(),
    }
}

pub fn succeeds(name: &'static str, args: Vec<String>, fragments: &[&str]) -> Case {
    Case {
        name,
        args,
        env: Vec::new(),
        expect: Ok(fragments.iter().map(|s| s.to_string()).collect()),
        outputs: Vec::new(),
    }
}

pub fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Runs `case` in `ws`, checking its outcome and that nothing but its outputs changed.
pub fn check(ws: &Workspace, case: Case) {
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

/// A llama-tiny copy sharded into two files with `extra` tiny tensors added to the second.
pub fn sharded_with_extra(ws: &Workspace, to: &str, extra: usize) -> PathBuf {
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

pub fn fs_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}
