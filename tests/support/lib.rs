//! Cross-crate integration tests of patchwork, and the helpers they share.
//!
//! The test files are targets of this package (`[[test]]` entries in `Cargo.toml`); each runs as
//! its own process, so tests that change the global registry live in files of their own and
//! serialise on [`global_lock`].

pub mod replacements;

use std::sync::{Mutex, MutexGuard, PoisonError};

use candle_core::{DType, Device, Tensor};
use patch_core::checkpoint::{RandomInit, Weights};
use patch_core::{Builder, Result};
use toy_model::{ToyConfig, ToyModel};

/// The small configuration the tests build.
pub fn toy_config() -> ToyConfig {
    ToyConfig {
        hidden_size: 8,
        intermediate_size: 16,
        num_layers: 2,
    }
}

/// Seeded random weights for the toy model.
pub fn toy_weights() -> Weights {
    Weights::new(RandomInit::new(7, 0.2), DType::F32, &Device::Cpu)
}

/// Builds the toy model with `builder`.
pub fn build_toy(builder: &Builder) -> Result<ToyModel> {
    ToyModel::build(builder, &toy_config())
}

/// A fixed input for the toy model: [4, hidden].
pub fn toy_input() -> Tensor {
    let h = toy_config().hidden_size;
    let data: Vec<f32> = (0..4 * h)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
        .collect();
    Tensor::from_vec(data, (4, h), &Device::Cpu).expect("toy input has a valid shape")
}

/// Serialises tests of one process that change the global registry, and resets it to the
/// link-time defaults for the test holding the guard.
pub fn global_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    patch_core::reset_patch_mapping();
    guard
}
