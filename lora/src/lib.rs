#![warn(missing_docs)]
//! LoRA adapters for patchwork's models, as ordinary patches chosen by module path: a crate of
//! patches built on the models' public API, as a user's would be.
//!
//! A [`LoraProjection`] replaces each projection site an adapter targets (by PEFT's rules:
//! `target_modules` as names or one regex, `layers_to_transform`, `exclude_modules`) and
//! wraps whatever that site would have built without it (`Builder::build_original`): the
//! float `Linear`, a bf16 one, or a quantized projection a topology chose (QLoRA's setting).
//! It computes `y = base(x) + s · B(A · dropout(x))` with `s = lora_alpha / r`
//! (`lora_alpha / sqrt(r)` with `use_rslora`), dropout in training mode only.
//!
//! [`LoraAdapters`] holds one or several adapters read from PEFT's folders
//! (`adapter_config.json`, `adapter_model.safetensors`), strictly: a key that changes what
//! the adapter computes and is not supported (DoRA, bias terms, another `peft_type`) is an
//! error naming it, and so are a missing, misshapen or unused tensor. One adapter (or none)
//! is active per model ([`LoraAdapters::set_active`]) and may be chosen per forward call
//! ([`ActiveAdapter`] in `ForwardOptions::extensions`); one can be merged into the float
//! base weights and unmerged exactly. Loaded [trainable](LoraOptions::trainable), the
//! adapter matrices are `Var`s and the base stays frozen (load it without `trainable()`):
//! the loss, the MoE aux loss and routing replay work as for a trainable model, and
//! [`LoraAdapters::gradients`] keys the gradients by PEFT's names;
//! [`LoraAdapters::save_pretrained`] writes a folder PEFT loads.
//!
//! ```no_run
//! use patchwork_lora::{LoraAdapters, LoraOptions};
//! use patchwork_models::LoadOptions;
//!
//! let adapters = LoraAdapters::from_pretrained(["adapters/sql"], &LoraOptions::default())?;
//! let model = adapters.load_model("models/llama", &LoadOptions::default())?;
//! let logits = model.forward(&candle_core::Tensor::new(&[[1u32, 2, 3]], model.device())?, None)?;
//! adapters.set_active(None)?; // the base model alone, without reloading
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod adapters;
mod config;
mod error;
mod matching;
mod merge;
mod options;
mod paths;
mod projection;
mod site;
mod train;
mod weights;

pub use adapters::LoraAdapters;
pub use config::LoraConfig;
pub use error::{Error, Result};
pub use matching::ModuleSet;
pub use options::{ActiveAdapter, LoraOptions};
pub use projection::LoraProjection;

/// The priority of the adapters' patch: above a quantization topology's, so the adapter
/// wraps the quantized projection, and at the default otherwise.
pub const PRIORITY: i32 = 0;
