//! FROZEN (see `src/lib.rs`): what the page's blocks share.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use candle_core::{Device, Tensor};
use patch_core::reset_patch_mapping;
use patchwork_models::prelude::*;

pub type Fallible = std::result::Result<(), Box<dyn std::error::Error>>;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

pub fn tokens() -> Tensor {
    Tensor::new(&[[66u32, 221, 47, 234, 117, 102, 13, 226]], &Device::Cpu).expect("ids")
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all());
    d.and_then(|d| d.to_scalar::<f32>()).expect("a difference")
}

/// The global registry is the page's subject: one block at a time, each starting from the
/// link-time patches (this crate's `CustomLlamaAttention`).
pub fn registry() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    reset_patch_mapping();
    guard
}

pub fn original(name: &str) -> CausalLM {
    let options = LoadOptions::default().with_patches(PatchSet::empty());
    AutoModelForCausalLM::from_pretrained(fixture(name), &options).expect("the fixture loads")
}
