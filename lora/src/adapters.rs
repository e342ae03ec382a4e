//! `LoraAdapters`: the adapters of one model, their patch, which one is active, merging,
//! gradients and saving.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use patch_core::{PatchKey, PatchSet, Replacement};
use patchwork_models::decoder::{Projection, ProjectionArgs};
use patchwork_models::{AutoModelForCausalLM, CausalLM, LoadOptions};

use crate::site::{Shared, Site};
use crate::weights::Adapter;
use crate::{Error, LoraConfig, LoraProjection, PRIORITY, Result};

/// How adapters are read.
#[derive(Clone, Debug)]
pub struct LoraOptions {
    trainable: bool,
    device: Device,
    seed: u64,
}

impl Default for LoraOptions {
    fn default() -> Self {
        Self {
            trainable: false,
            device: Device::Cpu,
            seed: 0,
        }
    }
}

impl LoraOptions {
    /// The adapter matrices (and saved modules) as trainable `Var`s
    /// ([`LoraAdapters::vars`], [`LoraAdapters::gradients`]). Load the base without
    /// `LoadOptions::trainable` to keep it frozen: no gradient reaches its weights and none of
    /// them becomes a `Var`.
    pub fn trainable(mut self) -> Self {
        self.trainable = true;
        self
    }

    /// The seed new adapters' `A` matrices are drawn from ([`LoraAdapters::new_adapters`]; 0
    /// by default).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The device the adapters' tensors live on (the model's; CPU by default).
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }
}

/// The adapter one forward call applies, whatever the model's active one is: put it in
/// `ForwardOptions::extensions` (`ActiveAdapter(None)`: the base alone).
///
/// ```
/// use patchwork_lora::ActiveAdapter;
/// use patchwork_models::ForwardOptions;
/// use patchwork_models::decoder::Extensions;
///
/// let options = ForwardOptions {
///     extensions: Extensions::new().with(ActiveAdapter::named("sql")),
///     ..ForwardOptions::default()
/// };
/// # let _ = options;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveAdapter(pub Option<String>);

impl ActiveAdapter {
    /// The adapter named `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self(Some(name.into()))
    }

    /// No adapter: the base model.
    pub fn none() -> Self {
        Self(None)
    }
}

/// The LoRA adapters of one model: read from PEFT's folders, applied by the patch set
/// [`LoraAdapters::patches`] returns, switched, merged, trained and saved here. Cloning shares
/// the same adapters (a handle). One set serves one model.
#[derive(Clone)]
pub struct LoraAdapters {
    inner: Arc<Inner>,
}

struct Inner {
    adapters: Vec<Adapter>,
    shared: Arc<Shared>,
    sites: Mutex<Vec<Arc<Site>>>,
}

impl LoraAdapters {
    /// Reads the adapter folders `dirs`, each named by its folder's name; the last one is
    /// active.
    pub fn from_pretrained<I, P>(dirs: I, options: &LoraOptions) -> Result<Self>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let named = dirs
            .into_iter()
            .map(|dir| {
                let dir = dir.as_ref().to_path_buf();
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .filter(|n| !n.is_empty() && n != "..")
                    .unwrap_or_else(|| "default".to_string());
                (name, dir)
            })
            .collect::<Vec<_>>();
        Self::from_named(named, options)
    }

    /// Reads adapters given as `(name, folder)`; the last one is active. Names must differ.
    pub fn from_named<I, N, P>(named: I, options: &LoraOptions) -> Result<Self>
    where
        I: IntoIterator<Item = (N, P)>,
        N: Into<String>,
        P: AsRef<Path>,
    {
        let adapters = named
            .into_iter()
            .map(|(name, dir)| {
                Adapter::read(
                    name.into(),
                    dir.as_ref(),
                    &options.device,
                    options.trainable,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_adapters(adapters)
    }

    /// New adapters of `configs` (`(name, config)`; the last one active), made as PEFT makes
    /// them: at each targeted projection `A` is drawn Kaiming-uniform (`U(-1/sqrt(in),
    /// 1/sqrt(in))`, from [`LoraOptions::with_seed`]) and `B` is zero, so the model starts
    /// as its base. Read them [trainable](LoraOptions::trainable) to train them, then
    /// [save](LoraAdapters::save_pretrained) them in PEFT's format.
    ///
    /// ```
    /// use std::path::Path;
    /// use patchwork_lora::{LoraAdapters, LoraConfig, LoraOptions};
    ///
    /// let config = LoraConfig::from_text(
    ///     Path::new("adapter_config.json"),
    ///     r#"{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}"#,
    /// )?;
    /// let adapters = LoraAdapters::new_adapters([("sql", config)], &LoraOptions::default().trainable())?;
    /// assert_eq!(adapters.active().as_deref(), Some("sql"));
    /// # Ok::<(), patchwork_lora::Error>(())
    /// ```
    pub fn new_adapters<I, N>(configs: I, options: &LoraOptions) -> Result<Self>
    where
        I: IntoIterator<Item = (N, LoraConfig)>,
        N: Into<String>,
    {
        let adapters = configs
            .into_iter()
            .map(|(name, config)| {
                Adapter::fresh(
                    name.into(),
                    config,
                    &options.device,
                    options.trainable,
                    options.seed,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_adapters(adapters)
    }

    fn from_adapters(adapters: Vec<Adapter>) -> Result<Self> {
        for (i, a) in adapters.iter().enumerate() {
            if adapters[..i].iter().any(|b| b.name == a.name) {
                return Err(Error::Invalid(format!(
                    "two adapters named {:?}: name them apart (NAME=DIR on the command line)",
                    a.name
                )));
            }
        }
        let names: Vec<String> = adapters.iter().map(|a| a.name.clone()).collect();
        let active = names.len().checked_sub(1);
        Ok(Self {
            inner: Arc::new(Inner {
                adapters,
                shared: Arc::new(Shared {
                    names,
                    active: RwLock::new(active),
                    training: AtomicBool::new(false),
                }),
                sites: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The adapters' names, in the order read.
    pub fn names(&self) -> Vec<String> {
        self.inner.shared.names.clone()
    }

    /// The config of the adapter `name`.
    pub fn config(&self, name: &str) -> Result<&LoraConfig> {
        Ok(&self.adapter(name)?.config)
    }

    fn adapter(&self, name: &str) -> Result<&Adapter> {
        let i = self.inner.shared.index(name)?;
        Ok(&self.inner.adapters[i])
    }

    /// The adapter applied when a call does not choose one (`None`: the base).
    pub fn active(&self) -> Option<String> {
        let active = *self
            .inner
            .shared
            .active
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        active.map(|i| self.inner.shared.names[i].clone())
    }

    /// Makes `name` the adapter applied when a call does not choose (`None`: the base), at
    /// once, without reloading.
    pub fn set_active(&self, name: Option<&str>) -> Result<()> {
        let index = name.map(|n| self.inner.shared.index(n)).transpose()?;
        *self
            .inner
            .shared
            .active
            .write()
            .unwrap_or_else(PoisonError::into_inner) = index;
        Ok(())
    }

    /// Training mode (dropout on the adapters' input) or not (the default).
    pub fn set_training(&self, training: bool) {
        self.inner
            .shared
            .training
            .store(training, Ordering::Relaxed);
    }

    /// The patch set that applies the adapters: a [`LoraProjection`] at every projection site
    /// (key `"Linear"`) some adapter targets (restricted to their paths,
    /// [`LoraConfig::path_regex`]), wrapping what the site builds without it, with
    /// priority [`PRIORITY`] (above a quantization topology's). Add it to a load with
    /// `LoadOptions::with_added_patches`, then call [`LoraAdapters::verify`].
    pub fn patches(&self) -> Result<PatchSet> {
        let this = self.clone();
        let label = self.inner.shared.names.join(", ");
        let paths = self
            .inner
            .adapters
            .iter()
            .map(|a| format!("(?:{})", a.config.path_regex()))
            .collect::<Vec<_>>()
            .join("|");
        Ok(PatchSet::from_mapping([(
            PatchKey::new("Linear").with_path(paths),
            Replacement::configured::<LoraProjection>(
                format!("adapters: {label}"),
                move |b, args| this.build_at(b, args),
            )
            .with_priority(PRIORITY),
        )])?)
    }

    fn build_at(
        &self,
        b: &patch_core::Builder,
        args: ProjectionArgs<'_>,
    ) -> patch_core::Result<Box<dyn Projection>> {
        let path = b.path().to_string();
        let (out, inp, bias) = (
            args.out_features,
            args.in_features,
            args.bias && args.tied.is_none(),
        );
        let mut at = Vec::with_capacity(self.inner.adapters.len());
        for adapter in &self.inner.adapters {
            let found = adapter
                .at(&path, out, inp, bias)
                .map_err(|e| patch_core::Error::other(e.to_string()))?;
            if found.is_some() {
                b.describe(describe(adapter, &path));
            }
            at.push(found);
        }
        let base = b.build_original(args)?;
        if at.iter().all(Option::is_none) {
            return Ok(base);
        }
        let mut sites = self
            .inner
            .sites
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if sites.iter().any(|s| s.path == path) {
            return Err(patch_core::Error::other(format!(
                "adapters at {path:?}: this LoraAdapters already serves a model; read the adapters again for a second model"
            )));
        }
        let site = Arc::new(Site {
            path,
            base,
            adapters: at,
            merged: RwLock::new(None),
            shared: self.inner.shared.clone(),
        });
        sites.push(site.clone());
        Ok(Box::new(LoraProjection { site }))
    }

    /// An error naming a tensor no projection took, or an adapter whose config matched no
    /// projection (PEFT refuses both): call it once the model is built.
    pub fn verify(&self) -> Result<()> {
        self.inner.adapters.iter().try_for_each(Adapter::check_used)
    }

    /// Loads the model at `dir` with these adapters on it (`options` plus
    /// [`LoraAdapters::patches`]) and [verifies](LoraAdapters::verify) them.
    pub fn load_model(&self, dir: impl AsRef<Path>, options: &LoadOptions) -> Result<CausalLM> {
        let options = options.clone().with_added_patches(self.patches()?);
        let model = AutoModelForCausalLM::from_pretrained(dir, &options)?;
        self.verify()?;
        Ok(model)
    }

    /// The module paths adapter `name` acts at.
    pub fn paths(&self, name: &str) -> Result<Vec<String>> {
        let adapter = self.adapter(name)?;
        Ok(adapter.store().paths.clone())
    }

    /// Merges adapter `name` into the float base weights of the projections it wraps (each
    /// becomes one product, `W + s·BA`), replacing any merged one: calls applying `name`
    /// compute with the merged weights. The base weights are kept, so
    /// [`LoraAdapters::unmerge`] is exact; the merged copy costs one weight per wrapped
    /// projection. An error, changing nothing, when a base is not a float `Linear`
    /// (quantized) or the adapters are trainable.
    pub fn merge(&self, name: &str) -> Result<()> {
        let i = self.inner.shared.index(name)?;
        if self.inner.adapters[i].is_trainable() {
            return Err(Error::Invalid(format!(
                "cannot merge {name:?}: its weights are trainable, and a merged copy would not follow training"
            )));
        }
        let sites = self
            .inner
            .sites
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let layers = sites
            .iter()
            .map(|s| s.merged_layer(i))
            .collect::<Result<Vec<_>>>()?;
        for (site, layer) in sites.iter().zip(layers) {
            *site.merged.write().unwrap_or_else(PoisonError::into_inner) = layer.map(|l| (i, l));
        }
        Ok(())
    }

    /// Drops the merged weights: the base computes again, as before merging, bit for bit.
    pub fn unmerge(&self) {
        for site in self
            .inner
            .sites
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            *site.merged.write().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// The adapter merged, if one is.
    pub fn merged(&self) -> Option<String> {
        let sites = self
            .inner
            .sites
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        sites.iter().find_map(|s| {
            let merged = s.merged.read().unwrap_or_else(PoisonError::into_inner);
            merged
                .as_ref()
                .map(|(i, _)| self.inner.shared.names[*i].clone())
        })
    }

    /// The trainable variables of adapter `name`, by PEFT's key (empty unless read
    /// [trainable](LoraOptions::trainable)): what an optimiser updates.
    pub fn vars(&self, name: &str) -> Result<BTreeMap<String, Var>> {
        Ok(self.adapter(name)?.store().vars.clone())
    }

    /// The gradient of every tensor of adapter `name` in `grads` (what `loss.backward()`
    /// returned), keyed by PEFT's names (`base_model.model.<path>.lora_A.weight`), float32 in
    /// the tensor's shape; zeros for a tensor the loss does not depend on, and for a base layer
    /// the file carries (frozen, as in PEFT).
    pub fn gradients(&self, name: &str, grads: &GradStore) -> Result<BTreeMap<String, Tensor>> {
        let adapter = self.adapter(name)?;
        if !adapter.is_trainable() {
            return Err(Error::Invalid(format!(
                "adapter {name:?} is frozen: read it with LoraOptions::trainable() for gradients"
            )));
        }
        // Every tensor of the file: a frozen one (a base layer it carries) gets zeros.
        let store = adapter.store();
        store
            .tensors
            .iter()
            .map(|(key, tensor)| {
                let g = match store.vars.get(key).and_then(|v| grads.get(v.as_tensor())) {
                    Some(g) => g.to_dtype(DType::F32)?,
                    None => tensor.zeros_like()?.to_dtype(DType::F32)?,
                };
                Ok((key.clone(), g))
            })
            .collect()
    }

    /// Writes adapter `name` to `dir` as PEFT saves it: `adapter_config.json` (the config
    /// read) and `adapter_model.safetensors` (its current values, float32, PEFT's keys).
    pub fn save_pretrained(&self, name: &str, dir: impl AsRef<Path>) -> Result<()> {
        let adapter = self.adapter(name)?;
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let config_file = dir.join("adapter_config.json");
        let mut json = adapter.config.json.clone();
        json.entry("peft_type").or_insert_with(|| "LORA".into());
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| Error::config(&config_file, "", e.to_string()))?;
        std::fs::write(&config_file, text).map_err(|e| Error::io(&config_file, e))?;
        let weights_file = dir.join("adapter_model.safetensors");
        let tensors = adapter
            .store()
            .tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_dtype(DType::F32)?.contiguous()?)))
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        candle_core::safetensors::save(&tensors, &weights_file)
            .map_err(|e| Error::tensor(&weights_file, "(file)", e.to_string()))?;
        Ok(())
    }
}

/// What the build report says of adapter `adapter` at `path`.
fn describe(adapter: &Adapter, path: &str) -> String {
    let c = &adapter.config;
    if c.saves(path) {
        return format!("adapter {}: saved copy", adapter.name);
    }
    let (r, alpha) = c.rank_and_alpha(path);
    format!(
        "adapter {}: r={r}, alpha={alpha}, scale={}{}",
        adapter.name,
        c.scale(path),
        if c.use_rslora { " (rsLoRA)" } else { "" }
    )
}
