//! `LoraAdapters`: the adapters of one model, their patch, which one is active, merging,
//! gradients and saving.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use patch_core::{PatchKey, PatchSet, Replacement};
use patchwork_models::decoder::{Projection, ProjectionArgs};
use patchwork_models::{AutoModelForCausalLM, CausalLM, LoadOptions};

use crate::options::LoraOptions;
use crate::site::{Shared, Site};
use crate::weights::Adapter;
use crate::{Error, LoraConfig, LoraProjection, PRIORITY, Result};

/// The LoRA adapters of one model: read from PEFT's folders, applied by the patch set
/// [`LoraAdapters::patches`] returns, switched, merged, trained and saved here. Cloning shares
/// the same adapters (a handle). One set serves one model.
#[derive(Clone)]
pub struct LoraAdapters {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub adapters: Vec<Adapter>,
    pub shared: Arc<Shared>,
    pub sites: Mutex<Vec<Arc<Site>>>,
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

    pub(crate) fn adapter(&self, name: &str) -> Result<&Adapter> {
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
