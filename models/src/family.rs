//! Model families, registered at link time: what `AutoModelForCausalLM` dispatches on.
//!
//! A family names its `model_type`, parses and validates its `config.json` into the common
//! [`DecoderConfig`], builds its decoder body from its sites, and lists those sites (for
//! `explain`). Registering one is one [`register_family!`](crate::register_family) line next to
//! it: no central match to edit. The weight transforms its checkpoints need are registered the
//! same way, with the checkpoint engine's `submit_conversion_mapping!` under its `model_type`,
//! so users can override them (`register_checkpoint_conversion_mapping(.., overwrite)`).

use std::sync::OnceLock;

use patch_core::{Builder, SiteInfo};
use serde_json::Value;

use crate::decoder::{DecoderConfig, DecoderModel};
use crate::{Error, Result};

/// A model family (see the module docs).
pub struct ModelFamily {
    /// The `model_type` of its configs (`llama`).
    pub model_type: &'static str,
    /// Its causal-LM class name (`LlamaForCausalLM`), as in `architectures`.
    pub architecture: &'static str,
    /// Parses and validates a config JSON; the `&str` names its source in errors.
    pub parse_config: fn(&Value, &str) -> Result<DecoderConfig>,
    /// Builds the decoder body under `b` (at `model`).
    pub build_model:
        fn(&Builder, &std::sync::Arc<DecoderConfig>) -> patch_core::Result<DecoderModel>,
    /// Its sites, in forward order.
    pub sites: &'static [SiteInfo],
}

impl std::fmt::Debug for ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFamily")
            .field("model_type", &self.model_type)
            .field("architecture", &self.architecture)
            .finish()
    }
}

/// A link-time registration of a [`ModelFamily`] (what [`register_family!`](crate::register_family) submits).
pub struct RegisteredFamily(pub &'static ModelFamily);

inventory::collect!(RegisteredFamily);

/// Registers a `static` [`ModelFamily`] at link time.
///
/// ```
/// use std::sync::Arc;
/// use patchwork_models::llama::{LlamaConfig, LlamaModel};
/// use patchwork_models::{ModelFamily, register_family};
///
/// /// Llama's layers under another model type.
/// pub static MY_FAMILY: ModelFamily = ModelFamily {
///     model_type: "my_llama",
///     architecture: "MyLlamaForCausalLM",
///     parse_config: |json, source| {
///         LlamaConfig::from_json(json, source)?.decoder_config(Arc::new(json.clone()), source)
///     },
///     build_model: LlamaModel::build,
///     sites: &[],
/// };
/// register_family!(MY_FAMILY);
///
/// assert!(patchwork_models::family::families().iter().any(|f| f.model_type == "my_llama"));
/// ```
#[macro_export]
macro_rules! register_family {
    ($family:path) => {
        $crate::__private::inventory::submit! { $crate::RegisteredFamily(&$family) }
    };
}

/// Every linked family, sorted by `model_type`.
pub fn families() -> &'static [&'static ModelFamily] {
    static ALL: OnceLock<Vec<&'static ModelFamily>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all: Vec<&'static ModelFamily> = inventory::iter::<RegisteredFamily>
            .into_iter()
            .map(|r| r.0)
            .collect();
        all.sort_by_key(|f| f.model_type);
        all
    })
}

/// The family of `model_type`; `source_name` names the config in the error.
pub fn family(model_type: &str, source_name: &str) -> Result<&'static ModelFamily> {
    families()
        .iter()
        .copied()
        .find(|f| f.model_type == model_type)
        .ok_or_else(|| Error::UnknownModelType {
            source_name: source_name.to_string(),
            model_type: model_type.to_string(),
            known: families()
                .iter()
                .map(|f| f.model_type)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The family a config JSON belongs to, by its `model_type`.
pub fn family_of(config: &Value, source_name: &str) -> Result<&'static ModelFamily> {
    match config.get("model_type") {
        Some(Value::String(t)) => family(t, source_name),
        Some(v) => Err(Error::config(
            source_name,
            "model_type",
            format!("expected a string, found {v}"),
        )),
        None => Err(Error::config(
            source_name,
            "model_type",
            format!(
                "missing: it picks the model family (known: {})",
                families()
                    .iter()
                    .map(|f| f.model_type)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
