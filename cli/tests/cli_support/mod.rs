//! What the output-contract tests share: the fixtures, their references, running the binary,
//! and the fixtures' logits and gradient tolerances.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

pub fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

pub fn patchwork(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(args)
        .output()
        .unwrap()
}

pub fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "patchwork failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// `max |a - b| <= 1e-4 * max(1, max |b|)` over the entries `keep` selects, every one finite
/// (the fixtures' tolerance, `patchwork_testing::LOGITS`).
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, keep: impl Fn(usize) -> bool) {
    patchwork_testing::assert_close_where(a, b, patchwork_testing::LOGITS, what, keep);
}

pub fn training_reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture(name).join("training_reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// Runs `forward` on `fixture` with `inputs` and extra flags; returns what it wrote.
pub fn forward(
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
pub fn assert_gradient_close(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.dtype(), DType::F32, "{what}");
    if let Err(e) = patchwork_testing::check_gradient(what, a, b) {
        panic!("{e}");
    }
}
