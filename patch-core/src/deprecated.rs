//! Names from before 0.2.0, kept for one release so code written against them still compiles
//! (with a warning naming the replacement); each goes away in 0.3.0. CHANGELOG.md lists them
//! with their migration.

#![allow(deprecated)]

use std::sync::Arc;

use crate::matching::{Resolution, SiteKey};
use crate::{AppliedPatches, Explain, PatchRecord, PatchSet, RegisteredAt, Site};

/// Formerly the guard `apply_patches` returned.
#[deprecated(since = "0.2.0", note = "renamed `AppliedPatches`")]
pub type PatchScope = AppliedPatches;

/// Formerly where a patch was registered (`Origin` now only means a tensor's provenance, in
/// `patch_checkpoint`).
#[deprecated(since = "0.2.0", note = "renamed `RegisteredAt`")]
pub type Origin = RegisteredAt;

/// Formerly the closure form of [`apply_patches`](crate::apply_patches): runs `f` with the
/// registered patches applied to models built by hand on this thread.
///
/// ```
/// # #![allow(deprecated)]
/// let answer = patch_core::with_patches(|| 42); // now: PatchSet::global().run_with(|| 42)
/// assert_eq!(answer, 42);
/// ```
#[deprecated(
    since = "0.2.0",
    note = "use `PatchSet::global().run_with(f)` (`with_patches(set)` now only means \"build with exactly this set\", on `Builder` and `LoadOptions`)"
)]
pub fn with_patches<R>(f: impl FnOnce() -> R) -> R {
    PatchSet::global().run_with(f)
}

impl PatchSet {
    /// Formerly the closure form of [`PatchSet::enter`].
    #[deprecated(since = "0.2.0", note = "renamed `PatchSet::run_with`")]
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        self.run_with(f)
    }

    /// Formerly what a site named by a [`SiteKey`] resolves to.
    #[deprecated(
        since = "0.2.0",
        note = "use `PatchSet::resolve(key)`, which takes a SiteKey or a SiteInfo"
    )]
    pub fn resolve_key(&self, site: SiteKey) -> Arc<Resolution> {
        self.resolve(site)
    }

    /// Formerly what the site type `T` resolves to.
    #[deprecated(since = "0.2.0", note = "use `PatchSet::resolve(T::info())`")]
    pub fn resolve_site<T: Site>(&self) -> Arc<Resolution> {
        self.resolve(T::info())
    }

    /// Formerly [`PatchSet::explain`] for sites named by [`SiteKey`]s.
    #[deprecated(
        since = "0.2.0",
        note = "use `PatchSet::explain(keys)`, which takes SiteKeys or SiteInfos"
    )]
    pub fn explain_keys(&self, keys: impl IntoIterator<Item = SiteKey>) -> Explain {
        self.explain(keys)
    }
}

impl PatchRecord {
    /// Formerly where this patch was registered.
    #[deprecated(since = "0.2.0", note = "renamed `PatchRecord::registered_at`")]
    pub fn origin(&self) -> &RegisteredAt {
        self.registered_at()
    }

    /// Formerly whether the key equals `name`.
    #[deprecated(
        since = "0.2.0",
        note = "use `record.matcher().rule(name) == Some(Rule::Exact)`"
    )]
    pub fn is_exact(&self, name: &str) -> bool {
        self.key() == name
    }

    /// Formerly whether the key, as a regex, matches anywhere in `name`.
    #[deprecated(since = "0.2.0", note = "use `record.matcher().rule(name).is_some()`")]
    pub fn is_match(&self, name: &str) -> bool {
        self.matcher().rule(name).is_some()
    }
}
