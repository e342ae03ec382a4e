//! One adapter as PEFT saves it: `adapter_config.json` and `adapter_model.safetensors`, its
//! tensors keyed `base_model.model.<path>.lora_A.weight` (`[r, in]`) and `...lora_B.weight`
//! (`[out, r]`), and `base_model.model.<path>.weight` (and `.bias`) for a module it saves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use candle_core::{DType, Device, Tensor, Var};

use crate::{Error, LoraConfig, Result};

/// PEFT's prefix of every key it saves for a causal LM.
const PREFIX: &str = "base_model.model.";

/// The key of one of the adapter matrices (`"A"` or `"B"`) of the module at `path`.
pub(crate) fn lora_key(path: &str, which: &str) -> String {
    format!("{PREFIX}{path}.lora_{which}.weight")
}

/// The key of a saved module's own tensor (`"weight"`, `"bias"`).
pub(crate) fn saved_key(path: &str, name: &str) -> String {
    format!("{PREFIX}{path}.{name}")
}

/// One adapter's config and tensors.
pub(crate) struct Adapter {
    pub name: String,
    pub config: LoraConfig,
    pub config_file: PathBuf,
    pub weights_file: PathBuf,
    /// The current values, by PEFT's key (the variables' tensors when trainable).
    pub tensors: BTreeMap<String, Tensor>,
    /// The trainable variables, by key (empty when frozen).
    pub vars: BTreeMap<String, Var>,
    /// The keys a projection took.
    used: Mutex<BTreeSet<String>>,
    /// Paths the adapter wraps or saves.
    pub paths: Mutex<Vec<String>>,
}

/// What an adapter puts at one projection.
#[derive(Clone, Debug)]
pub(crate) enum AtSite {
    /// `s · B(A x)` added to the base's output.
    Lora {
        a: Tensor,
        b: Tensor,
        scale: f64,
        dropout: f64,
        /// The base layer's weight and bias the adapter carries (PEFT writes them for a
        /// targeted output head), computing instead of the site's own base.
        base: Option<(Tensor, Option<Tensor>)>,
    },
    /// A saved copy of the module computing instead of the base.
    Saved {
        weight: Tensor,
        bias: Option<Tensor>,
    },
}

impl Adapter {
    /// Reads the adapter folder `dir`, its tensors as float32 on `device` (variables when
    /// `trainable`).
    pub fn read(name: String, dir: &Path, device: &Device, trainable: bool) -> Result<Self> {
        let config_file = dir.join("adapter_config.json");
        let weights_file = dir.join("adapter_model.safetensors");
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such adapter folder"),
            ));
        }
        let config = LoraConfig::from_file(&config_file)?;
        if !weights_file.is_file() {
            let message = if dir.join("adapter_model.bin").is_file() {
                "missing: only adapter_model.bin (PyTorch pickle) is there; save with safe_serialization=True"
            } else {
                "missing"
            };
            return Err(Error::tensor(&weights_file, "(file)", message));
        }
        let read = candle_core::safetensors::load(&weights_file, device)
            .map_err(|e| Error::tensor(&weights_file, "(file)", e.to_string()))?;
        let mut tensors = BTreeMap::new();
        let mut vars = BTreeMap::new();
        for (key, tensor) in read {
            let tensor = tensor
                .to_dtype(DType::F32)
                .map_err(|e| Error::tensor(&weights_file, &key, e.to_string()))?;
            // A base layer PEFT writes along (`lm_head.base_layer.weight` when the head is a
            // target: `save_embedding_layers`) stays frozen, as in PEFT.
            let tensor = if trainable && !key.contains(".base_layer.") {
                let var = Var::from_tensor(&tensor)?;
                let t = var.as_tensor().clone();
                vars.insert(key.clone(), var);
                t
            } else {
                tensor
            };
            tensors.insert(key, tensor);
        }
        Ok(Self {
            name,
            config,
            config_file,
            weights_file,
            tensors,
            vars,
            used: Mutex::new(BTreeSet::new()),
            paths: Mutex::new(Vec::new()),
        })
    }

    /// The tensor at `key` of shape `dims`, marked used.
    fn take(&self, key: &str, dims: &[usize], why: &str) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(key)
            .ok_or_else(|| Error::tensor(&self.weights_file, key, format!("missing ({why})")))?;
        if tensor.dims() != dims {
            return Err(Error::tensor(
                &self.weights_file,
                key,
                format!("shape {:?}, expected {dims:?} ({why})", tensor.dims()),
            ));
        }
        self.used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_string());
        Ok(tensor.clone())
    }

    /// What this adapter puts at the projection at `path` (`[out, in]`, with a bias when
    /// `bias`), if anything.
    pub fn at(&self, path: &str, out: usize, inp: usize, bias: bool) -> Result<Option<AtSite>> {
        let c = &self.config;
        let found = if c.saves(path) {
            let why = format!("modules_to_save names {path:?}");
            let weight = self.take(&saved_key(path, "weight"), &[out, inp], &why)?;
            let bias = if bias {
                Some(self.take(&saved_key(path, "bias"), &[out], &why)?)
            } else {
                None
            };
            Some(AtSite::Saved { weight, bias })
        } else if c.targets(path) {
            let (r, _) = c.rank_and_alpha(path);
            let why = format!("target_modules names {path:?}, rank {r}");
            let a = self.take(&lora_key(path, "A"), &[r, inp], &why)?;
            let b = self.take(&lora_key(path, "B"), &[out, r], &why)?;
            let base_key = saved_key(path, "base_layer.weight");
            let base = if self.tensors.contains_key(&base_key) {
                let weight = self.take(&base_key, &[out, inp], "the base layer it carries")?;
                let bias_key = saved_key(path, "base_layer.bias");
                let bias = if bias || self.tensors.contains_key(&bias_key) {
                    Some(self.take(&bias_key, &[out], "the base layer it carries")?)
                } else {
                    None
                };
                Some((weight, bias))
            } else {
                None
            };
            Some(AtSite::Lora {
                a,
                b,
                scale: c.scale(path),
                dropout: c.lora_dropout,
                base,
            })
        } else {
            None
        };
        if found.is_some() {
            self.paths
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(path.to_string());
        }
        Ok(found)
    }

    /// An error naming the tensors no projection took, or that the adapter wrapped nothing.
    pub fn check_used(&self) -> Result<()> {
        let used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = self.tensors.keys().find(|k| !used.contains(*k)) {
            let unused = self.tensors.keys().filter(|k| !used.contains(*k)).count();
            return Err(Error::tensor(
                &self.weights_file,
                key,
                format!(
                    "not used ({unused} of {} tensors): no projection of this model is at its path, or the config does not target it",
                    self.tensors.len()
                ),
            ));
        }
        if used.is_empty() {
            return Err(Error::config(
                &self.config_file,
                "target_modules",
                "matches no projection of this model",
            ));
        }
        Ok(())
    }
}
