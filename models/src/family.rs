//! Model families, registered at link time: what `AutoModelForCausalLM` dispatches on.
//!
//! A family names its `model_type`, parses and validates its `config.json` into the common
//! [`DecoderConfig`], builds its decoder body from its sites, and lists those sites (for
//! `explain`). A family module declares its sites ([`crate::decoder_sites!`]), names them for
//! the shared building blocks ([`DecoderSites`]), and registers itself with one
//! [`decoder_family!`](crate::decoder_family) (or, for a hand-written [`ModelFamily`],
//! [`register_family!`](crate::register_family)): no central match to edit. The weight
//! transforms its checkpoints need are registered the same way, with the checkpoint engine's
//! `submit_conversion_mapping!` under its `model_type`, so users can override them
//! (`register_checkpoint_conversion_mapping(.., overwrite)`).

use std::sync::OnceLock;

use patch_core::{Builder, SiteInfo};
use serde_json::Value;

use crate::decoder::{DecoderConfig, DecoderModel, DecoderSites, FamilyConfig};
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

impl ModelFamily {
    /// The family whose sites are `M`'s, whose config is `M::Config` and whose sites list (for
    /// `explain`) is `sites`.
    pub const fn of<M: Family>(sites: &'static [SiteInfo]) -> Self {
        Self {
            model_type: <M::Config as FamilyConfig>::MODEL_TYPE,
            architecture: <M::Config as FamilyConfig>::ARCHITECTURE,
            parse_config: <M::Config as FamilyConfig>::parse,
            build_model: DecoderModel::load::<M>,
            sites,
        }
    }
}

/// A family's decoder body (transformers' `LlamaModel`): its sites, its config type and its
/// registered [`ModelFamily`]. What the `...ForCausalLM` entry points ([`ForCausalLM`](crate::ForCausalLM)) build.
pub trait Family: DecoderSites {
    /// Its `config.json`.
    type Config: FamilyConfig;

    /// Its registered family.
    fn family() -> &'static ModelFamily;
}

/// Declares and registers a family: `pub static NAME = Model(Config, SITES);` defines the
/// static [`ModelFamily`] of `Model`'s sites (listed in `SITES`) and `Config`, implements
/// [`Family`] for `Model`, and registers it at link time.
#[macro_export]
macro_rules! decoder_family {
    ($(#[$meta:meta])* $vis:vis static $name:ident = $model:ident($config:ty, $sites:expr);) => {
        $(#[$meta])*
        $vis static $name: $crate::ModelFamily = $crate::ModelFamily::of::<$model>($sites);

        impl $crate::family::Family for $model {
            type Config = $config;
            fn family() -> &'static $crate::ModelFamily {
                &$name
            }
        }

        $crate::register_family!($name);
    };
}

impl ModelFamily {
    /// Every site a model of this family builds: its own ([`ModelFamily::sites`]), then the
    /// ones every family shares (the token embedding and the projections), what `explain`
    /// lists.
    pub fn all_sites(&self) -> Vec<&'static SiteInfo> {
        use patch_core::Site;
        let mut sites: Vec<&'static SiteInfo> = self.sites.iter().collect();
        sites.push(crate::decoder::Embedding::info());
        sites.push(crate::decoder::Linear::info());
        sites
    }
}

impl std::fmt::Debug for ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFamily")
            .field("model_type", &self.model_type)
            .field("architecture", &self.architecture)
            .finish()
    }
}

/// Formerly where the family entry points' type was declared.
#[deprecated(since = "0.2.0", note = "moved: use `patchwork_models::ForCausalLM`")]
pub type ForCausalLM<M> = crate::for_causal_lm::ForCausalLM<M>;

/// A link-time registration of a [`ModelFamily`] (what [`register_family!`](crate::register_family) submits).
pub struct RegisteredFamily(pub &'static ModelFamily);

inventory::collect!(RegisteredFamily);

/// Registers a `static` [`ModelFamily`] at link time.
///
/// ```
/// use std::sync::Arc;
/// use patchwork_models::decoder::DecoderModel;
/// use patchwork_models::llama::{LLAMA_SITES, LlamaConfig, LlamaModel};
/// use patchwork_models::{ModelFamily, register_family};
///
/// /// Llama's layers under another model type.
/// pub static MY_FAMILY: ModelFamily = ModelFamily {
///     model_type: "my_llama",
///     architecture: "MyLlamaForCausalLM",
///     parse_config: |json, source| {
///         LlamaConfig::from_json(json, source)?.decoder_config(Arc::new(json.clone()), source)
///     },
///     build_model: DecoderModel::load::<LlamaModel>,
///     sites: LLAMA_SITES,
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
    if !config.is_object() {
        let mut shown = config.to_string();
        if let Some((cut, _)) = shown.char_indices().nth(80) {
            shown.truncate(cut);
            shown.push_str("...");
        }
        return Err(Error::config(
            source_name,
            "",
            format!("expected a JSON object, found {shown}"),
        ));
    }
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

/// The common config view of a config JSON, parsed and checked by the family its `model_type`
/// names, without building anything (what tools that only need the layer layout read:
/// [`crate::rollouts`]). `source_name` names the config in errors.
///
/// ```
/// let json = serde_json::json!({
///     "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
///     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
/// });
/// let config = patchwork_models::family::decoder_config(&json, "config.json")?;
/// assert_eq!(config.num_hidden_layers, 2);
/// # Ok::<(), patchwork_models::Error>(())
/// ```
pub fn decoder_config(config: &Value, source_name: &str) -> Result<DecoderConfig> {
    (family_of(config, source_name)?.parse_config)(config, source_name)
}
