//! [`FamilyConfig`]: how a family's `config.json` (the shared key groups of `config_keys.rs`,
//! flattened, plus its own keys) is read, written, built by hand
//! ([`ConfigBuilder`](crate::decoder::ConfigBuilder)) and
//! lowered to the common view; [`family_config!`](crate::family_config) implements it.
//!
//! Reading overlays the published keys on the family's defaults (transformers' defaults for
//! absent keys), so a group's defaults can differ between families; unknown keys are ignored
//! (published configs carry many).

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::decoder::config::DecoderConfig;
use crate::decoder::config_check::ConfigCheck;
use crate::decoder::config_keys::DecoderKeys;
use crate::{Error, Result};

/// A family's `config.json`: shared key groups (flattened) plus its own keys, with
/// transformers' defaults ([`Default`]).
pub trait FamilyConfig: Serialize + DeserializeOwned + Default {
    /// `model_type` (`llama`).
    const MODEL_TYPE: &'static str;
    /// The causal-LM class name (`LlamaForCausalLM`), written in `architectures`.
    const ARCHITECTURE: &'static str;

    /// Checks the value of each key group in `json` (the config with the defaults overlaid),
    /// so that an error names the key: the flattened groups of a family config hide it.
    fn check_keys(json: &Value, source_name: &str) -> Result<()>;

    /// The keys every family reads.
    fn common(&self) -> &DecoderKeys;

    /// What this family's own keys make of the common view `config` (lowered from
    /// [`FamilyConfig::common`]): biases, norms, sliding windows, experts.
    fn lower(&self, check: &ConfigCheck<'_>, config: &mut DecoderConfig) -> Result<()>;

    /// Validates this config and lowers it to the common view; `json` is the config as
    /// published (kept for saving and read for the rope keys).
    fn decoder_config(&self, json: Arc<Value>, source_name: &str) -> Result<DecoderConfig> {
        let check = ConfigCheck::new(source_name);
        let mut config = self.common().lower(Self::MODEL_TYPE, &check, json)?;
        self.lower(&check, &mut config)?;
        config.checked(&check)
    }

    /// Parses a config JSON object: its keys over the family's defaults; `source_name` (the
    /// file) and the key appear in errors.
    fn from_json(json: &Value, source_name: &str) -> Result<Self> {
        let Value::Object(keys) = json else {
            return Err(Error::config(
                source_name,
                "",
                format!("expected a JSON object, found {json}"),
            ));
        };
        let mut merged = serde_json::to_value(Self::default())
            .map_err(|e| Error::config(source_name, "", e.to_string()))?;
        if let Value::Object(defaults) = &mut merged {
            for (k, v) in keys {
                defaults.insert(k.clone(), v.clone());
            }
        }
        Self::check_keys(&merged, source_name)?;
        key_group(&merged, source_name)
    }

    /// This config as the JSON transformers would write (with `model_type` and
    /// `architectures`).
    fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("model_type".into(), Self::MODEL_TYPE.into());
            obj.insert(
                "architectures".into(),
                serde_json::json!([Self::ARCHITECTURE]),
            );
        }
        v
    }

    /// The family's config parser: JSON as published to the common view.
    fn parse(json: &Value, source_name: &str) -> Result<DecoderConfig> {
        Self::from_json(json, source_name)?.decoder_config(Arc::new(json.clone()), source_name)
    }
}

/// Deserializes one key group (or a whole config) from `json`, the error naming the key.
pub fn key_group<T: DeserializeOwned>(json: &Value, source_name: &str) -> Result<T> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let key = e.path().to_string();
        Error::config(source_name, key, e.into_inner().to_string())
    })
}

/// Implements [`FamilyConfig`] for a family config made of the key groups listed (each one a
/// flattened field, the decoder keys under `common`) whose own keys lower as `lower`'s block
/// says, [`HasKeys`](crate::decoder::HasKeys) for each group (the builder's setters of that
/// group), and the inherent `builder`, `from_json`, `to_json` and `decoder_config`.
///
/// ```ignore
/// family_config! {
///     LlamaConfig: "llama", "LlamaForCausalLM"; groups DecoderKeys;
///     lower(self, check, c) {
///         c.mlp_bias = self.mlp_bias;
///         Ok(())
///     }
/// }
/// ```
#[macro_export]
macro_rules! family_config {
    (
        $config:ident: $model_type:expr, $architecture:expr; groups $($group:ty),+;
        lower($self:ident, $check:ident, $c:ident) $body:block
    ) => {
        impl $crate::decoder::FamilyConfig for $config {
            const MODEL_TYPE: &'static str = $model_type;
            const ARCHITECTURE: &'static str = $architecture;

            fn check_keys(json: &::serde_json::Value, source_name: &str) -> $crate::Result<()> {
                $( $crate::decoder::key_group::<$group>(json, source_name)?; )+
                Ok(())
            }

            fn common(&self) -> &$crate::decoder::DecoderKeys {
                &self.common
            }

            #[allow(unused_variables)]
            fn lower(
                &$self,
                $check: &$crate::decoder::ConfigCheck<'_>,
                $c: &mut $crate::decoder::DecoderConfig,
            ) -> $crate::Result<()> $body
        }

        $( impl $crate::decoder::HasKeys<$group> for $config {} )+

        impl $config {
            /// This family's config built by hand: transformers' defaults for every key, the
            /// keys named set with typed setters, validated by `build()` exactly as a
            /// `config.json` is (upstream's `Config(hidden_size=64, ...)`).
            pub fn builder() -> $crate::decoder::ConfigBuilder<Self> {
                $crate::decoder::ConfigBuilder::new()
            }

            /// Parses a config JSON object: its keys over transformers' defaults for this
            /// family; `source_name` (the file) and the key appear in errors. Unknown keys are
            /// ignored.
            pub fn from_json(json: &::serde_json::Value, source_name: &str) -> $crate::Result<Self> {
                <Self as $crate::decoder::FamilyConfig>::from_json(json, source_name)
            }

            /// This config as the JSON transformers would write (with `model_type` and
            /// `architectures`).
            pub fn to_json(&self) -> ::serde_json::Value {
                <Self as $crate::decoder::FamilyConfig>::to_json(self)
            }

            /// Validates this config and lowers it to the common view; `json` is the config
            /// as published (kept for saving and read for the rope keys).
            pub fn decoder_config(
                &self,
                json: ::std::sync::Arc<::serde_json::Value>,
                source_name: &str,
            ) -> $crate::Result<$crate::decoder::DecoderConfig> {
                <Self as $crate::decoder::FamilyConfig>::decoder_config(self, json, source_name)
            }
        }
    };
}
