//! A local HF checkpoint folder: `config.json` plus `model.safetensors` or a sharded
//! checkpoint (`model.safetensors.index.json`).
//!
//! Interim implementation: direct key lookup, no transforms yet. The conversion engine
//! replaces `CheckpointSource`'s internals behind the same API.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use candle_core::Tensor;
use candle_core::safetensors::MmapedSafetensors;

use crate::{Error, Result, Transform, TransformScope, WeightRequest, WeightSource};

/// An opened checkpoint folder.
pub struct Checkpoint {
    dir: PathBuf,
    config: serde_json::Value,
    files: Vec<PathBuf>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl Checkpoint {
    /// Opens `dir`: reads `config.json` and finds the safetensors files.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| io_err(&config_path, e))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| io_err(&config_path, e))?;
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| io_err(&index, e))?;
            let map = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| io_err(&index, "no \"weight_map\" object"))?;
            let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(io_err(
                &dir,
                "no model.safetensors or model.safetensors.index.json in this folder",
            ));
        };
        Ok(Self { dir, config, files })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// A load session over this checkpoint, converting with `transforms`.
    pub fn source(&self, transforms: Vec<Transform>) -> Result<CheckpointSource> {
        // SAFETY: the files are memory-mapped read-only; like every mmap-based loader this
        // assumes they are not truncated while mapped.
        let st =
            unsafe { MmapedSafetensors::multi(&self.files) }.map_err(|e| io_err(&self.dir, e))?;
        let keys = st.tensors().into_iter().map(|(k, _)| k).collect();
        Ok(CheckpointSource {
            st,
            _transforms: transforms,
            keys,
            consumed: Mutex::new(HashMap::new()),
            dir: self.dir.clone(),
        })
    }
}

/// A load session: serves requests from the checkpoint and accounts for every tensor.
pub struct CheckpointSource {
    st: MmapedSafetensors,
    _transforms: Vec<Transform>,
    keys: BTreeSet<String>,
    consumed: Mutex<HashMap<String, usize>>,
    dir: PathBuf,
}

impl WeightSource for CheckpointSource {
    fn get(&self, r: &WeightRequest<'_>) -> Result<Tensor> {
        if !self.keys.contains(r.name) {
            return Err(Error::Missing {
                name: r.name.to_string(),
                shape: r.shape.dims().to_vec(),
                context: format!(" (checkpoint {})", self.dir.display()),
            });
        }
        let t = self.st.load(r.name, r.device)?;
        if t.dims() != r.shape.dims() {
            return Err(Error::Shape {
                name: r.name.to_string(),
                expected: r.shape.dims().to_vec(),
                found: t.dims().to_vec(),
                context: format!(" (checkpoint {})", self.dir.display()),
            });
        }
        *self
            .consumed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(r.name.to_string())
            .or_default() += 1;
        Ok(t.to_dtype(r.dtype)?)
    }

    fn contains(&self, name: &str, _scopes: &[TransformScope]) -> bool {
        self.keys.contains(name)
    }

    fn finish(&self) -> Result<()> {
        let consumed = self.consumed.lock().unwrap_or_else(PoisonError::into_inner);
        let unused: Vec<&String> = self
            .keys
            .iter()
            .filter(|k| !consumed.contains_key(*k))
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(Error::Io {
                path: self.dir.display().to_string(),
                message: format!(
                    "{} checkpoint tensors were not used: {unused:?}",
                    unused.len()
                ),
            })
        }
    }
}
