//! `Builder`: what a module under construction receives, to get its weights and build its
//! sub-sites through the patch registry.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use patch_checkpoint::{Init, Transform, Weights};

use crate::matching::{Outcome, Resolution, Rule, SiteKey};
use crate::replacement::BuildFn;
use crate::{
    Build, BuildReport, BuiltSite, Error, ObservedSite, PatchRecord, PatchSet, Result, Site, Slot,
};

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
    /// In a site's or replacement's `build` only: its index in the report.
    current: Option<usize>,
    /// In a replacement's `build` only: what the site would build without it.
    original: Option<Arc<dyn Any + Send + Sync>>,
}

/// What a site would build without the replacement being built: the candidates after it in
/// the matching order, then the site's own type ([`Builder::build_original`]).
struct Original<S: ?Sized + Slot> {
    site: &'static str,
    own_type: &'static str,
    own: BuildFn<S>,
    rest: Vec<(Arc<PatchRecord>, Rule)>,
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
            current: None,
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
            current: None,
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

    /// How site `T` resolves at this path: what [`Builder::build`] would build here (a parent
    /// that fuses its children when nothing replaces them asks this first).
    pub fn resolution<T: Site>(&self) -> Arc<Resolution> {
        self.patches().resolve_at(SiteKey::of::<T>(), self.path())
    }

    /// Builds site `T` at this path through the registry: its replacement if a patch applies
    /// here (see [`crate::matching`]), else `T`. Whichever type is built gets the weight
    /// transforms it carries ([`Build::transforms`]), scoped to this path.
    pub fn build<T: Site>(&self, args: <T::Slot as Slot>::Args<'_>) -> Result<Box<T::Slot>> {
        let resolution = self.resolution::<T>();
        let own: BuildFn<T::Slot> = Arc::new(build_as::<T>);
        let built = match &resolution.outcome {
            Outcome::Original => {
                let index = self.note::<T>(std::any::type_name::<T>(), None, &resolution);
                let mut b = self.clone();
                b.current = Some(index);
                b.original = None;
                own(&b, args).map(|m| (m, index))
            }
            Outcome::Patched { record, rule } => {
                let index = self.note::<T>(
                    record.replacement().type_name(),
                    Some((*rule, record.key().to_string())),
                    &resolution,
                );
                let original = Original::<T::Slot> {
                    site: T::NAME,
                    own_type: std::any::type_name::<T>(),
                    own,
                    rest: resolution.chain.iter().skip(1).cloned().collect(),
                };
                self.build_candidate(record, original, index, args)
                    .map(|m| (m, index))
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

    /// Builds `record`'s replacement here as the site's report entry `index`, with `original`
    /// as what it wraps.
    fn build_candidate<S: ?Sized + Slot>(
        &self,
        record: &PatchRecord,
        original: Original<S>,
        index: usize,
        args: S::Args<'_>,
    ) -> Result<Box<S>> {
        let replacement = record.replacement();
        // Resolution only picks replacements of the site's slot.
        let build = replacement
            .build_fn::<S>()
            .ok_or_else(|| Error::SlotMismatch {
                key: record.key().to_string(),
                site: original.site.to_string(),
                site_slot: S::NAME,
                replacement: replacement.type_name().to_string(),
                replacement_slot: replacement.slot(),
            })?;
        let mut scoped = self.with_transforms(replacement.type_name(), replacement.transforms());
        scoped.current = Some(index);
        scoped.original = Some(Arc::new(original));
        build(&scoped, args)
    }

    /// In a replacement's `build`: builds what the site would have built without this
    /// replacement, at the same path with the same weights: the next patch that applies here
    /// in the matching order (see [`crate::matching`], rule 5), else the site's own type (with
    /// the transforms each carries). A replacement that wraps the original this way is a
    /// decorator: registered by pattern over several sites, it wraps whichever original each
    /// one has (quantize it, time it, add an adapter to it). An error outside a replacement's
    /// `build`, or for another slot than the site's.
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
        let index = self.current;
        let built = match original.rest.split_first() {
            Some(((record, _), rest)) => {
                let next = Original::<S> {
                    site: original.site,
                    own_type: original.own_type,
                    own: original.own.clone(),
                    rest: rest.to_vec(),
                };
                self.wrapped(index, record.replacement().type_name());
                match index {
                    Some(index) => self.build_candidate(record, next, index, args),
                    None => Err(Error::other("build_original: no site being built")),
                }
            }
            None => {
                self.wrapped(index, original.own_type);
                let mut own = self.clone();
                own.original = None;
                (original.own)(&own, args)
            }
        };
        built.map_err(|e| Error::Build {
            path: self.path().to_string(),
            site: original.site,
            source: Box::new(e),
        })
    }

    /// Adds `detail` to what the report says about the site being built (in a site's or
    /// replacement's `build`; ignored elsewhere): the format a quantized projection chose and
    /// why, the adapter a projection carries. `explain` and the build report show it.
    pub fn describe(&self, detail: impl Into<String>) {
        if let Some(index) = self.current {
            let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(site) = record.get_mut(index) {
                site.details.push(detail.into());
            }
        }
    }

    /// Records that the site at `index` wraps a module of type `inner`.
    fn wrapped(&self, index: Option<usize>, inner: &'static str) {
        if let Some(index) = index {
            let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(site) = record.get_mut(index) {
                site.wraps.push(inner);
            }
        }
    }

    /// This builder with `transforms` active for every tensor requested under this path;
    /// `owner` names who carries them in reports.
    pub fn with_transforms(&self, owner: &'static str, transforms: Vec<Transform>) -> Self {
        Self {
            weights: self.weights.with_transforms(owner, transforms),
            patches: self.patches.clone(),
            record: self.record.clone(),
            current: self.current,
            original: self.original.clone(),
        }
    }

    /// This builder with the transforms `T` carries: what a replacement that constructs
    /// another type directly (wrapping the original, say) uses for that constructor, since
    /// only the type the registry builds gets its transforms automatically.
    pub fn with_transforms_of<T: Build>(&self) -> Self {
        self.with_transforms(std::any::type_name::<T>(), T::transforms())
    }

    /// Records site `T` about to be built here as `module`; returns its index in the report.
    fn note<T: Site>(
        &self,
        module: &'static str,
        patch: Option<(Rule, String)>,
        resolution: &Arc<Resolution>,
    ) -> usize {
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        record.push(BuiltSite {
            path: self.path().to_string(),
            site: T::NAME,
            slot: <T::Slot as Slot>::NAME,
            module,
            patch,
            wraps: Vec::new(),
            details: Vec::new(),
            resolution: resolution.clone(),
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
