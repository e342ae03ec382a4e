//! Merging an adapter into the float base weights, and back.

use std::sync::PoisonError;

use crate::{Error, LoraAdapters, Result};

impl LoraAdapters {
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
}
