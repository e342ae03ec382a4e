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
    device: Device,
    trainable: bool,
    /// A new adapter (no file): its tensors are made at build, as PEFT initialises them,
    /// from this seed.
    fresh: Option<u64>,
    store: Mutex<Store>,
}

/// What an adapter holds and what the model took.
#[derive(Default)]
pub(crate) struct Store {
    /// The current values, by PEFT's key (the variables' tensors when trainable).
    pub tensors: BTreeMap<String, Tensor>,
    /// The trainable variables, by key (empty when frozen).
    pub vars: BTreeMap<String, Var>,
    /// The keys a projection took.
    used: BTreeSet<String>,
    /// Paths the adapter wraps or saves, in build order.
    pub paths: Vec<String>,
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
        let adapter = Self {
            name,
            config,
            config_file,
            weights_file,
            device: device.clone(),
            trainable,
            fresh: None,
            store: Mutex::new(Store::default()),
        };
        for (key, tensor) in read {
            let tensor = tensor
                .to_dtype(DType::F32)
                .map_err(|e| Error::tensor(&adapter.weights_file, &key, e.to_string()))?;
            adapter.insert(key, tensor)?;
        }
        Ok(adapter)
    }

    /// A new adapter of `config`: at build, each targeted projection gets `A` drawn as PEFT
    /// draws it (Kaiming-uniform, `U(-1/sqrt(in), 1/sqrt(in))`, seeded by `seed` and the key)
    /// and `B` zero, so the adapter starts as a no-op.
    pub fn fresh(
        name: String,
        config: LoraConfig,
        device: &Device,
        trainable: bool,
        seed: u64,
    ) -> Result<Self> {
        let config_file = PathBuf::from(format!("<new adapter {name:?}>/adapter_config.json"));
        if !config.modules_to_save.is_empty() {
            return Err(Error::config(
                &config_file,
                "modules_to_save",
                "a new adapter cannot save modules yet: leave it empty",
            ));
        }
        Ok(Self {
            weights_file: PathBuf::from(format!(
                "<new adapter {name:?}>/adapter_model.safetensors"
            )),
            name,
            config,
            config_file,
            device: device.clone(),
            trainable,
            fresh: Some(seed),
            store: Mutex::new(Store::default()),
        })
    }

    /// Whether the adapter's matrices are variables.
    pub fn is_trainable(&self) -> bool {
        self.trainable
    }

    /// The store, locked.
    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a tensor, as a variable when trainable (a base layer PEFT writes along,
    /// `lm_head.base_layer.weight` when the head is a target, stays frozen as in PEFT).
    fn insert(&self, key: String, tensor: Tensor) -> Result<Tensor> {
        let mut store = self.store();
        let tensor = if self.trainable && !key.contains(".base_layer.") {
            let var = Var::from_tensor(&tensor)?;
            let t = var.as_tensor().clone();
            store.vars.insert(key.clone(), var);
            t
        } else {
            tensor
        };
        store.tensors.insert(key, tensor.clone());
        Ok(tensor)
    }

    /// A new adapter's tensor at `key`, `[rows, cols]`: `lora_A` uniform, anything else zero.
    fn initialise(&self, seed: u64, key: &str, dims: &[usize]) -> Result<Tensor> {
        use rand::{Rng, SeedableRng};
        let tensor = if key.ends_with(".lora_A.weight") {
            let cols = dims.last().copied().unwrap_or(1).max(1);
            let bound = 1.0 / (cols as f64).sqrt();
            let key_hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ key_hash);
            let n = dims.iter().product::<usize>();
            let values: Vec<f32> = (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            Tensor::from_vec(values, dims, &self.device)?
        } else {
            Tensor::zeros(dims, DType::F32, &self.device)?
        };
        self.insert(key.to_string(), tensor)
    }

    /// The tensor at `key` of shape `dims`, marked used.
    fn take(&self, key: &str, dims: &[usize], why: &str) -> Result<Tensor> {
        let existing = self.store().tensors.get(key).cloned();
        let tensor = match (existing, self.fresh) {
            (Some(t), _) => t,
            (None, Some(seed)) => self.initialise(seed, key, dims)?,
            (None, None) => {
                return Err(Error::tensor(
                    &self.weights_file,
                    key,
                    format!("missing ({why})"),
                ));
            }
        };
        if tensor.dims() != dims {
            return Err(Error::tensor(
                &self.weights_file,
                key,
                format!("shape {:?}, expected {dims:?} ({why})", tensor.dims()),
            ));
        }
        self.store().used.insert(key.to_string());
        Ok(tensor)
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
            let has = |key: &str| self.store().tensors.contains_key(key);
            let base = if has(&base_key) {
                let weight = self.take(&base_key, &[out, inp], "the base layer it carries")?;
                let bias_key = saved_key(path, "base_layer.bias");
                let bias = if bias || has(&bias_key) {
                    Some(self.take(&bias_key, &[out], "the base layer it carries")?)
                } else {
                    None
                };
                Some((weight, bias))
            } else {
                None
            };
            // Frozen, the scale is folded into B once (one product less per call); trainable,
            // B must stay the variable the optimiser updates.
            let (b, scale) = match (self.trainable, c.scale(path)) {
                (false, s) if s != 1.0 => (b.affine(s, 0.0)?, 1.0),
                (_, s) => (b, s),
            };
            Some(AtSite::Lora {
                a,
                b,
                scale,
                dropout: c.lora_dropout,
                base,
            })
        } else {
            None
        };
        if found.is_some() {
            self.store().paths.push(path.to_string());
        }
        Ok(found)
    }

    /// An error naming the tensors no projection took, or that the adapter wrapped nothing.
    pub fn check_used(&self) -> Result<()> {
        let store = self.store();
        let used = &store.used;
        if let Some(key) = store.tensors.keys().find(|k| !used.contains(*k)) {
            let unused = store.tensors.keys().filter(|k| !used.contains(*k)).count();
            return Err(Error::tensor(
                &self.weights_file,
                key,
                format!(
                    "not used ({unused} of {} tensors): no projection of this model is at its path, or the config does not target it",
                    store.tensors.len()
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
