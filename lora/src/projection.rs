//! `LoraProjection`: the projection an adapter's patch builds at the sites it targets.

use std::sync::Arc;

use candle_core::Tensor;
use patch_core::{Build, Builder, Module, Result};
use patchwork_models::decoder::{PassContext, Projection, ProjectionArgs};

use crate::site::Site;

/// A projection carrying one or several LoRA adapters over the projection the site would
/// have built without them (its base): `base(x) + s · B(A · dropout(x))` for the active
/// adapter, the adapter's saved copy for a module it saves (`modules_to_save`), or the base
/// alone when no adapter is active here. Built by [`LoraAdapters::patches`]; a site only the
/// base's type is built where no adapter targets the path.
///
/// [`LoraAdapters::patches`]: crate::LoraAdapters::patches
pub struct LoraProjection {
    pub(crate) site: Arc<Site>,
}

impl LoraProjection {
    /// The module path it was built at.
    pub fn path(&self) -> &str {
        &self.site.path
    }

    /// The projection it wraps.
    pub fn base(&self) -> &dyn Projection {
        &*self.site.base
    }

    /// The names of the adapters that act here (a product or a saved copy).
    pub fn adapters(&self) -> Vec<&str> {
        self.site
            .adapters
            .iter()
            .zip(&self.site.shared.names)
            .filter(|(at, _)| at.is_some())
            .map(|(_, name)| name.as_str())
            .collect()
    }
}

impl std::fmt::Debug for LoraProjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraProjection")
            .field("path", &self.site.path)
            .field("base", &self.site.base.type_name())
            .field("adapters", &self.adapters())
            .finish()
    }
}

impl Build for LoraProjection {
    type Slot = dyn Projection;

    /// Not buildable alone: adapters come from [`crate::LoraAdapters::patches`].
    fn build(b: &Builder, _: ProjectionArgs<'_>) -> Result<Box<dyn Projection>> {
        Err(patch_core::Error::other(format!(
            "LoraProjection at {:?} is built by LoraAdapters::patches(), which carries the adapters' weights; it has no default",
            b.path()
        )))
    }

    fn wraps(&self) -> Option<&dyn Module> {
        Some(&*self.site.base)
    }
}

impl Projection for LoraProjection {
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        self.site.forward(x, pass)
    }

    fn in_features(&self) -> usize {
        self.site.base.in_features()
    }

    fn out_features(&self) -> usize {
        self.site.base.out_features()
    }
}
