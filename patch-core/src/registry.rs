//! The global registry and the run-time mapping API, with transformers' names and semantics.
//!
//! The registry starts with the link-time `#[patch]` entries of every linked crate. Every
//! change publishes a new [`PatchSet`]; readers take a snapshot (one `Arc` clone), so a build
//! never sees a half-applied change and never blocks a writer for long.

use std::sync::{LazyLock, PoisonError, RwLock};

use crate::{PatchKey, PatchMapping, PatchSet, Replacement, Result};

static GLOBAL: LazyLock<RwLock<PatchSet>> = LazyLock::new(|| RwLock::new(PatchSet::link_time()));

/// The registry as it is now.
pub(crate) fn snapshot() -> PatchSet {
    GLOBAL
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn update<R>(f: impl FnOnce(&mut PatchSet) -> R) -> R {
    let mut guard = GLOBAL.write().unwrap_or_else(PoisonError::into_inner);
    f(&mut guard)
}

/// Registers `mapping` (key -> replacement) globally: every model built by `from_pretrained`,
/// `from_config` or inside [`apply_patches`](crate::apply_patches) from now on uses it.
///
/// A key is a site name (exact match) or a regex (matching anywhere in the name; anchor it
/// with `^`/`$`), optionally restricted to module paths with a [`PatchKey`]
/// (`PatchKey::new("Linear").with_path(r"\.q_proj$")`). An already registered key is an error
/// unless `overwrite`. An invalid regex, or a key that names a site of another slot than its
/// replacement, is an error. Either every key is registered or none is.
///
/// ```
/// # use patch_core::{register_patch_mapping, Replacement};
/// # fn demo(custom: Replacement) -> patch_core::Result<()> {
/// register_patch_mapping([("LlamaAttention", custom)], false)?;
/// # Ok(()) }
/// ```
pub fn register_patch_mapping<I, K>(mapping: I, overwrite: bool) -> Result<()>
where
    I: IntoIterator<Item = (K, Replacement)>,
    K: Into<PatchKey>,
{
    update(|set| set.register_patch_mapping(mapping, overwrite))
}

/// Unregisters every patch under each of `keys` (the keys used to register them: a name, or
/// a [`PatchKey`] with its path). A key that is not registered is an error, and then nothing
/// is removed.
pub fn unregister_patch_mapping<I, K>(keys: I) -> Result<()>
where
    I: IntoIterator<Item = K>,
    K: Into<PatchKey>,
{
    update(|set| set.unregister_patch_mapping(keys))
}

/// Removes every registered patch, the link-time `#[patch]` entries included
/// ([`reset_patch_mapping`] brings those back).
pub fn clear_patch_mapping() {
    update(PatchSet::clear_patch_mapping)
}

/// Restores the link-time defaults: every `#[patch]` entry, and nothing registered at run time.
pub fn reset_patch_mapping() {
    update(|set| *set = PatchSet::link_time())
}

/// A snapshot of the registered patches, in registration order (link-time entries first).
pub fn get_patch_mapping() -> PatchMapping {
    snapshot().mapping()
}
