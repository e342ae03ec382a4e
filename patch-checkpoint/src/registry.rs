//! Checkpoint conversion mappings by model type or class name, with transformers' names:
//! [`register_checkpoint_conversion_mapping`], [`get_checkpoint_conversion_mapping`],
//! [`unregister_checkpoint_conversion_mapping`].
//!
//! The global registry starts with the link-time defaults of every linked crate, submitted
//! with [`submit_conversion_mapping!`](crate::submit_conversion_mapping) (the models crate
//! ships `qwen2_moe`'s expert stacking this way). It is built on first use, never before
//! `main`, in a stable order (by key, then source location). A lookup for a config tries each
//! class name in its `"architectures"` first, then its `"model_type"`: a class name beats a
//! model type.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use crate::{Error, Result, Transform};

/// A link-time default mapping, submitted with
/// [`submit_conversion_mapping!`](crate::submit_conversion_mapping).
#[derive(Debug)]
pub struct ConversionEntry {
    key: &'static str,
    transforms: fn() -> Vec<Transform>,
    file: &'static str,
    line: u32,
}

impl ConversionEntry {
    /// The entry mapping `key` (a model type or class name) to `transforms()`; `file` and
    /// `line` locate the submission for messages.
    pub const fn new(
        key: &'static str,
        transforms: fn() -> Vec<Transform>,
        file: &'static str,
        line: u32,
    ) -> Self {
        Self {
            key,
            transforms,
            file,
            line,
        }
    }
}

inventory::collect!(ConversionEntry);

/// Submits a default checkpoint conversion mapping at link time:
/// `submit_conversion_mapping!("qwen2_moe", qwen2_moe_mapping);` where `qwen2_moe_mapping` is
/// a `fn() -> Vec<Transform>`. The crate that does this must be linked (referenced) by the
/// final binary.
///
/// ```
/// use patch_checkpoint::{Op, Transform, WeightConverter};
///
/// fn my_mapping() -> Vec<Transform> {
///     vec![WeightConverter::new(["q_proj", "k_proj", "v_proj"], ["qkv_proj"], [Op::Concatenate { dim: 0 }]).into()]
/// }
/// patch_checkpoint::submit_conversion_mapping!("my_model_type", my_mapping);
///
/// assert_eq!(patch_checkpoint::get_checkpoint_conversion_mapping("my_model_type").unwrap().unwrap(), my_mapping());
/// ```
#[macro_export]
macro_rules! submit_conversion_mapping {
    ($key:expr, $transforms:path $(,)?) => {
        $crate::__private::inventory::submit! {
            $crate::ConversionEntry::new($key, $transforms, file!(), line!())
        }
    };
}

/// Where a conversion mapping was registered: submitted at link time, or at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisteredAt {
    /// Submitted at link time.
    LinkTime {
        /// Source file of the submission.
        file: &'static str,
        /// Line.
        line: u32,
    },
    /// Registered at run time.
    Runtime,
}

impl fmt::Display for RegisteredAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisteredAt::LinkTime { file, line } => {
                write!(f, "link-time default at {file}:{line}")
            }
            RegisteredAt::Runtime => f.write_str("registered at run time"),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    transforms: Arc<[Transform]>,
    registered_at: RegisteredAt,
    /// A second, different link-time default for the same key.
    conflict: Option<RegisteredAt>,
}

/// A set of checkpoint conversion mappings, by model type or class name. The global one is
/// behind the free functions; make your own to load without global state.
#[derive(Clone, Debug, Default)]
pub struct ConversionRegistry {
    entries: BTreeMap<String, Entry>,
}

impl ConversionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding the link-time defaults of every linked crate.
    ///
    /// Two different defaults for one key are kept as a conflict that lookups of that key
    /// report ([`Error::Ambiguous`]) until a run-time registration overwrites it; identical
    /// duplicates are merged.
    pub fn link_time() -> Self {
        let mut all: Vec<&ConversionEntry> =
            inventory::iter::<ConversionEntry>.into_iter().collect();
        all.sort_by_key(|e| (e.key, e.file, e.line));
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for e in all {
            let transforms: Arc<[Transform]> = (e.transforms)().into();
            let registered_at = RegisteredAt::LinkTime {
                file: e.file,
                line: e.line,
            };
            match entries.get_mut(e.key) {
                Some(existing) if existing.transforms != transforms => {
                    existing.conflict.get_or_insert(registered_at);
                }
                Some(_) => {}
                None => {
                    entries.insert(
                        e.key.to_string(),
                        Entry {
                            transforms,
                            registered_at,
                            conflict: None,
                        },
                    );
                }
            }
        }
        Self { entries }
    }

    /// Registers `transforms` under `key` (a model type such as `"qwen2_moe"` or a class name
    /// such as `"Qwen2MoeForCausalLM"`). Every transform is validated first. An existing key is
    /// an error unless `overwrite`.
    pub fn register(
        &mut self,
        key: impl Into<String>,
        transforms: Vec<Transform>,
        overwrite: bool,
    ) -> Result<()> {
        let key = key.into();
        for t in &transforms {
            t.validate()?;
        }
        if let Some(existing) = self.entries.get(&key)
            && !overwrite
        {
            return Err(Error::KeyExists {
                key,
                registered_at: existing.registered_at.to_string(),
            });
        }
        self.entries.insert(
            key,
            Entry {
                transforms: transforms.into(),
                registered_at: RegisteredAt::Runtime,
                conflict: None,
            },
        );
        Ok(())
    }

    /// Removes the mapping under `key` and returns it; an unknown key is an error.
    pub fn unregister(&mut self, key: &str) -> Result<Vec<Transform>> {
        match self.entries.remove(key) {
            Some(e) => Ok(e.transforms.to_vec()),
            None => Err(Error::UnknownKey {
                key: key.to_string(),
                known: self.known(),
            }),
        }
    }

    fn known(&self) -> String {
        if self.entries.is_empty() {
            "none".into()
        } else {
            self.entries
                .keys()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    /// The mapping under `key`, if any (an error if two link-time defaults disagree on it).
    pub fn get(&self, key: &str) -> Result<Option<Vec<Transform>>> {
        match self.entries.get(key) {
            None => Ok(None),
            Some(e) => match &e.conflict {
                Some(other) => Err(Error::Ambiguous {
                    key: key.to_string(),
                    first: e.registered_at.to_string(),
                    second: other.to_string(),
                }),
                None => Ok(Some(e.transforms.to_vec())),
            },
        }
    }

    /// Where the mapping under `key` came from.
    pub fn registered_at(&self, key: &str) -> Option<RegisteredAt> {
        self.entries.get(key).map(|e| e.registered_at.clone())
    }

    /// The registered keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The mapping for a model config: the first class name in `"architectures"` that has
    /// one, else `"model_type"`'s. Returns the key used with the transforms.
    pub fn for_config(
        &self,
        config: &serde_json::Value,
    ) -> Result<Option<(String, Vec<Transform>)>> {
        let classes = config
            .get("architectures")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str());
        let model_type = config.get("model_type").and_then(|v| v.as_str());
        for key in classes.chain(model_type) {
            if let Some(t) = self.get(key)? {
                return Ok(Some((key.to_string(), t)));
            }
        }
        Ok(None)
    }
}

static GLOBAL: LazyLock<RwLock<ConversionRegistry>> =
    LazyLock::new(|| RwLock::new(ConversionRegistry::link_time()));

/// A snapshot of the global registry.
pub fn conversion_registry() -> ConversionRegistry {
    GLOBAL
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn update<R>(f: impl FnOnce(&mut ConversionRegistry) -> R) -> R {
    f(&mut GLOBAL.write().unwrap_or_else(PoisonError::into_inner))
}

/// Registers `transforms` globally for `model_type_or_class_name`; an existing key is an
/// error unless `overwrite` (a model's link-time default counts as existing).
///
/// ```
/// use patch_checkpoint::{register_checkpoint_conversion_mapping, Op, WeightConverter};
///
/// register_checkpoint_conversion_mapping(
///     "my_llama_variant",
///     vec![WeightConverter::new(["q_proj", "k_proj", "v_proj"], ["qkv_proj"], [Op::Concatenate { dim: 0 }]).into()],
///     false,
/// )?;
/// # Ok::<(), patch_checkpoint::Error>(())
/// ```
pub fn register_checkpoint_conversion_mapping(
    model_type_or_class_name: impl Into<String>,
    transforms: Vec<Transform>,
    overwrite: bool,
) -> Result<()> {
    update(|r| r.register(model_type_or_class_name, transforms, overwrite))
}

/// The globally registered mapping for `model_type_or_class_name`, if any.
pub fn get_checkpoint_conversion_mapping(
    model_type_or_class_name: &str,
) -> Result<Option<Vec<Transform>>> {
    GLOBAL
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(model_type_or_class_name)
}

/// Removes the global mapping for `model_type_or_class_name` and returns it; an unknown key
/// is an error.
pub fn unregister_checkpoint_conversion_mapping(
    model_type_or_class_name: &str,
) -> Result<Vec<Transform>> {
    update(|r| r.unregister(model_type_or_class_name))
}

/// The global mapping for a model config (class name beats model type), with the key used.
pub fn checkpoint_conversion_mapping_for(
    config: &serde_json::Value,
) -> Result<Option<(String, Vec<Transform>)>> {
    GLOBAL
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .for_config(config)
}
