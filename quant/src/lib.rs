#![warn(missing_docs)]
//! Quantized projections and expert banks for patchwork's models, as ordinary patches chosen
//! by module path: a crate of patches built on the models' public API, as a user's would be.
//!
//! A [`Topology`] says which format each weight is stored in: an ordered list of
//! (path regex -> format or float) rules, first match wins, with a default; rows that do not
//! fit a format fall back as llama.cpp's quantizer does (Q4_K to Q5_0, ..., F16 when not even
//! a 32-weight block fits), never an error. [`Topology::patches`] is the patch set that
//! applies it: [`QuantizedLinear`] at every projection site (`Linear`) and
//! [`QuantizedExperts`] at every routed-experts site, both registered below the default
//! priority so a user's own patch at the same sites wins and can wrap them
//! (`Builder::build_original`), as a LoRA adapter over a quantized base does.
//!
//! ```
//! use patchwork_models::{AutoModelForCausalLM, LoadOptions};
//! use patchwork_quant::{Format, Topology};
//!
//! let topology = Topology::new(Some(Format::Q8_0)).with_rule("lm_head", None)?;
//! let options = LoadOptions::default().with_added_patches(topology.patches()?);
//! let config = serde_json::json!({"model_type": "llama", "vocab_size": 64, "hidden_size": 64,
//!     "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2});
//! let model = AutoModelForCausalLM::from_config(&config, &options)?;
//! let q = model.report().at("model.layers.0.mlp.down_proj").unwrap();
//! assert!(q.built::<patchwork_quant::QuantizedLinear>());
//! assert_eq!(q.details, ["q8_0 (default)"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod experts;
mod format;
mod gguf;
mod linear;
mod topology;
mod weight;

pub use experts::QuantizedExperts;
pub use format::Format;
pub use gguf::{GGUF_PRIORITY, GgufEmbedding, GgufExperts, GgufLinear, gguf_patches};
pub use linear::QuantizedLinear;
pub use topology::{Choice, Topology, parse_format};
pub use weight::QuantizedWeight;

use patch_core::{PatchKey, PatchSet, Replacement};

/// The priority of a topology's patches: below the default (0), so a user's patch at the same
/// sites wins, and can wrap the quantized module with `Builder::build_original`.
pub const PRIORITY: i32 = -100;

/// What can go wrong describing a topology.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule (`REGEX=FORMAT`) is malformed.
    #[error("quantization rule {rule:?}: {message}")]
    Rule {
        /// The rule as given.
        rule: String,
        /// What is wrong.
        message: String,
    },
    /// Registering the topology's patches failed.
    #[error(transparent)]
    Patch(#[from] patch_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Topology {
    /// The patch set that applies this topology: [`QuantizedLinear`] at every projection site
    /// (key `"Linear"`) and [`QuantizedExperts`] at every routed-experts site (pattern
    /// `"Experts$"`), each deciding per path, with priority [`PRIORITY`]. Add it to a load
    /// with `LoadOptions::with_added_patches`.
    pub fn patches(&self) -> Result<PatchSet> {
        let label = self.label();
        let projections = self.clone();
        let experts = self.clone();
        Ok(PatchSet::from_mapping([
            (
                PatchKey::new("Linear"),
                Replacement::configured::<QuantizedLinear>(label.clone(), move |b, args| {
                    QuantizedLinear::build_with(&projections, b, args)
                })
                .with_priority(PRIORITY),
            ),
            (
                PatchKey::new("Experts$"),
                Replacement::configured::<QuantizedExperts>(label, move |b, args| {
                    QuantizedExperts::build_with(&experts, b, args)
                })
                .with_priority(PRIORITY),
            ),
        ])?)
    }
}
