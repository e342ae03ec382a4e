//! `patchwork resave` on the reference checkpoints.

use std::path::Path;
use std::process::Command;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn tensors(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let model_file = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("model"));
        if model_file && path.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (name, view) in st.tensors() {
                let mut data = format!("{:?}{:?}", view.dtype(), view.shape()).into_bytes();
                data.extend_from_slice(view.data());
                out.push((name, data));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn resave_round_trips_and_shards() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(["resave"])
        .arg(fixture("qwen2-moe-tiny"))
        .arg(out.path())
        .args(["--max-shard-size", "250000"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("wrote 91 tensors"), "{stdout}");
    assert!(out.path().join("model.safetensors.index.json").exists());
    let (a, b) = (tensors(&fixture("qwen2-moe-tiny")), tensors(out.path()));
    assert_eq!(a.len(), 91);
    assert!(a == b, "the resaved tensors differ from the originals");
}

#[test]
fn resave_of_a_missing_folder_names_it() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(["resave", "/nonexistent/ckpt"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!status.status.success());
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        stderr.contains("\"/nonexistent/ckpt\": no such folder"),
        "{stderr}"
    );
}
