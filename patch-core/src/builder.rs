//! `Builder`: what a module under construction receives, to get its weights and build its
//! sub-sites through the patch registry.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use patch_checkpoint::{Init, Transform, Weights};

use crate::matching::{Outcome, Rule, SiteKey};
use crate::replacement::short_type_name;
use crate::{Build, Error, ObservedSite, PatchSet, Result, Site, Slot};

/// A module under construction's view of the model being built: its path, its weights, and
/// the patches sub-sites resolve against. Cheap to clone; [`Builder::pp`] descends.
///
/// Patches come from, in order: the set given to [`Builder::with_patches`] (what
/// `from_pretrained`/`from_config` pass: the global registry), else the current thread's
/// set applied by [`apply_patches`](crate::apply_patches) at the time of each build, else none (every
/// site builds itself, as a model built by hand does upstream).
#[derive(Clone)]
pub struct Builder {
    weights: Weights,
    patches: Option<PatchSet>,
    record: Arc<Mutex<Vec<BuiltSite>>>,
    /// In a replacement's `build` only: how the site being replaced builds itself.
    original: Option<Arc<dyn Any + Send + Sync>>,
}

/// How a site builds itself, kept for its replacement ([`Builder::build_original`]).
struct Original<S: ?Sized + Slot> {
    site: &'static str,
    build: for<'a> fn(&Builder, S::Args<'a>) -> Result<Box<S>>,
}

/// `T`'s own construction, with the transforms `T` carries (what the registry does for it).
fn build_as<T: Site>(b: &Builder, args: <T::Slot as Slot>::Args<'_>) -> Result<Box<T::Slot>> {
    T::build(&b.with_transforms_of::<T>(), args)
}

impl Builder {
    /// A builder at the root of `weights`, following the patches applied on this thread.
    pub fn new(weights: Weights) -> Self {
        Self {
            weights,
            patches: None,
            record: Arc::new(Mutex::new(Vec::new())),
            original: None,
        }
    }

    /// This builder with an explicit patch set, whatever is applied on this thread.
    pub fn with_patches(mut self, patches: PatchSet) -> Self {
        self.patches = Some(patches);
        self
    }

    /// The patch set the next site built through this builder resolves against.
    pub fn patches(&self) -> PatchSet {
        match &self.patches {
            Some(set) => set.clone(),
            None => PatchSet::current().unwrap_or_default(),
        }
    }

    /// The builder for sub-module `name` (dotted paths allowed).
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        Self {
            weights: self.weights.pp(name),
            patches: self.patches.clone(),
            record: self.record.clone(),
            original: None,
        }
    }

    /// The dotted module path (`model.layers.0.self_attn`; empty at the root).
    pub fn path(&self) -> &str {
        self.weights.path()
    }

    /// The weights at this path.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// A candle-nn `VarBuilder` at this path, for `candle_nn::linear` and friends.
    pub fn vb(&self) -> VarBuilder<'static> {
        self.weights.var_builder()
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.weights.dtype()
    }

    /// The device.
    pub fn device(&self) -> &Device {
        self.weights.device()
    }

    /// The tensor `name` under this path, with shape `shape`.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        Ok(self.weights.get(shape, name)?)
    }

    /// Like [`Builder::get`], telling a random source how to initialise it.
    pub fn get_with_init(&self, shape: impl Into<Shape>, name: &str, init: Init) -> Result<Tensor> {
        Ok(self.weights.get_with_init(shape, name, init)?)
    }

    /// Builds site `T` at this path through the registry: its replacement if a patch applies,
    /// else `T`. Whichever type is built gets the weight transforms it carries
    /// ([`Build::transforms`]), scoped to this path.
    pub fn build<T: Site>(&self, args: <T::Slot as Slot>::Args<'_>) -> Result<Box<T::Slot>> {
        let resolution = self.patches().resolve(SiteKey::of::<T>());
        let built = match &resolution.outcome {
            Outcome::Original => {
                let index = self.note(
                    T::NAME,
                    <T::Slot as Slot>::NAME,
                    std::any::type_name::<T>(),
                    None,
                );
                let mut own = self.with_transforms_of::<T>();
                own.original = None;
                T::build(&own, args).map(|m| (m, index))
            }
            Outcome::Patched { record, rule } => {
                let replacement = record.replacement();
                // Resolution only picks replacements of the site's slot.
                let factory =
                    replacement
                        .factory::<T::Slot>()
                        .ok_or_else(|| Error::SlotMismatch {
                            key: record.key().to_string(),
                            site: T::NAME.to_string(),
                            site_slot: <T::Slot as Slot>::NAME,
                            replacement: replacement.type_name().to_string(),
                            replacement_slot: replacement.slot(),
                        })?;
                let index = self.note(
                    T::NAME,
                    <T::Slot as Slot>::NAME,
                    replacement.type_name(),
                    Some((*rule, record.key().to_string())),
                );
                let mut scoped =
                    self.with_transforms(replacement.type_name(), replacement.transforms());
                scoped.original = Some(Arc::new(Original::<T::Slot> {
                    site: T::NAME,
                    build: build_as::<T>,
                }));
                (factory.build)(&scoped, args).map(|m| (m, index))
            }
            Outcome::Conflict(conflict) => Err(conflict.to_error(&resolution.site)),
        };
        let site = |index| ObservedSite {
            index,
            path: self.path().into(),
            site: T::NAME,
        };
        built
            .map(|(module, index)| <T::Slot as Slot>::observe(module, site(index)))
            .map_err(|e| match e {
                e @ Error::Build { .. } => e,
                other => Error::Build {
                    path: self.path().to_string(),
                    site: T::NAME,
                    source: Box::new(other),
                },
            })
    }

    /// In a replacement's `build`: builds what the site being replaced would have built
    /// without the patch, at the same path with the same weights (the site's own type, with
    /// the transforms it carries). A replacement registered by pattern over several sites
    /// wraps whichever original each one has this way (a decorator: quantize its
    /// projections, time it, log it). An error outside a replacement's `build`, or for
    /// another slot than the site's.
    pub fn build_original<S: ?Sized + Slot>(&self, args: S::Args<'_>) -> Result<Box<S>> {
        let original = self.original.as_ref().ok_or_else(|| {
            Error::other(format!(
                "build_original at {:?}: only a replacement's build can build the original it replaces",
                self.path()
            ))
        })?;
        let original = original.downcast_ref::<Original<S>>().ok_or_else(|| {
            Error::other(format!(
                "build_original at {:?}: the site replaced here is not of slot {}",
                self.path(),
                S::NAME
            ))
        })?;
        let mut own = self.clone();
        own.original = None;
        (original.build)(&own, args).map_err(|e| Error::Build {
            path: self.path().to_string(),
            site: original.site,
            source: Box::new(e),
        })
    }

    /// This builder with `transforms` active for every tensor requested under this path;
    /// `owner` names who carries them in reports.
    pub fn with_transforms(&self, owner: &'static str, transforms: Vec<Transform>) -> Self {
        Self {
            weights: self.weights.with_transforms(owner, transforms),
            patches: self.patches.clone(),
            record: self.record.clone(),
            original: self.original.clone(),
        }
    }

    /// This builder with the transforms `T` carries: what a replacement that constructs
    /// another type directly (wrapping the original, say) uses for that constructor, since
    /// only the type the registry builds gets its transforms automatically.
    pub fn with_transforms_of<T: Build>(&self) -> Self {
        self.with_transforms(std::any::type_name::<T>(), T::transforms())
    }

    /// Records a site about to be built; returns its index in the report.
    fn note(
        &self,
        site: &'static str,
        slot: &'static str,
        module: &'static str,
        patch: Option<(Rule, String)>,
    ) -> usize {
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        record.push(BuiltSite {
            path: self.path().to_string(),
            site,
            slot,
            module,
            patch,
        });
        record.len() - 1
    }

    /// Every site built through this builder (and its clones) so far, parents first.
    pub fn report(&self) -> BuildReport {
        BuildReport {
            sites: self
                .record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("path", &self.path())
            .field("patches", &self.patches)
            .finish()
    }
}

/// One site built into a model: where, what was asked for, what was built, and why.
#[derive(Clone, Debug)]
pub struct BuiltSite {
    /// Dotted module path.
    pub path: String,
    /// The site's name.
    pub site: &'static str,
    /// Its slot.
    pub slot: &'static str,
    /// The type actually built.
    pub module: &'static str,
    /// The rule and key of the patch applied, if any.
    pub patch: Option<(Rule, String)>,
}

/// The sites a model was built from, parents first: a built model's answer to "is my patch
/// applied?".
#[derive(Clone, Debug, Default)]
pub struct BuildReport {
    sites: Vec<BuiltSite>,
}

impl BuildReport {
    /// The sites, parents first.
    pub fn sites(&self) -> &[BuiltSite] {
        &self.sites
    }

    /// The site built at `path`, if any.
    pub fn at(&self, path: &str) -> Option<&BuiltSite> {
        self.sites.iter().find(|s| s.path == path)
    }

    /// How many sites were replaced by a patch.
    pub fn patched(&self) -> usize {
        self.sites.iter().filter(|s| s.patch.is_some()).count()
    }
}

impl fmt::Display for BuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} sites built, {} patched",
            self.sites.len(),
            self.patched()
        )?;
        let path_w = self
            .sites
            .iter()
            .map(|s| s.path.len())
            .max()
            .unwrap_or(0)
            .max(4);
        let site_w = self
            .sites
            .iter()
            .map(|s| s.site.len())
            .max()
            .unwrap_or(0)
            .max(4);
        for s in &self.sites {
            let how = match &s.patch {
                Some((rule, key)) => format!("{} ({rule} {key:?})", short_type_name(s.module)),
                None => "original".to_string(),
            };
            writeln!(f, "  {:<path_w$}  {:<site_w$}  {how}", s.path, s.site)?;
        }
        Ok(())
    }
}
