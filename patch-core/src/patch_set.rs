//! `PatchSet`: an immutable set of patches with a resolution cache.

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::mapping::link_time_records;
use crate::matching::{self, Resolution, SiteKey};
use crate::{Error, PatchKey, PatchMapping, PatchRecord, RegisteredAt, Replacement, Result};

/// Run-time registrations are numbered from 1 in call order, across all sets; link-time entries
/// are 0.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(1);

/// A set of patches a model is built with: the global registry's snapshot, a thread's
/// set applied by `apply_patches`, or a set of your own handed to a [`Builder`](crate::Builder) with no
/// global state involved.
///
/// Cloning is cheap and clones share one resolution cache: each site name is matched against
/// the patterns once, later builds pay one hash lookup per site. Methods that change the set
/// (`register_patch_mapping`, ...) give it fresh contents and a fresh cache; other clones keep
/// what they had.
#[derive(Clone)]
pub struct PatchSet {
    inner: Arc<Inner>,
}

struct Inner {
    records: Vec<Arc<PatchRecord>>,
    cache: RwLock<HashMap<(&'static str, TypeId), Arc<Resolution>>>,
}

impl PatchSet {
    fn from_records(records: Vec<Arc<PatchRecord>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                records,
                cache: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// No patches: every site builds itself.
    pub fn empty() -> Self {
        Self::from_records(Vec::new())
    }

    /// The link-time defaults: every `#[patch]` of every linked crate.
    pub fn link_time() -> Self {
        Self::from_records(link_time_records().0.clone())
    }

    /// The crates whose `#[patch]` entries are linked into this binary, sorted: a crate of
    /// patches that is only a dependency, never referenced, is missing here (add
    /// `use that_crate as _;` to the binary).
    ///
    /// ```
    /// // A binary checking that its patches crate is linked:
    /// let crates = patch_core::PatchSet::link_time_crates();
    /// assert!(crates.iter().all(|c| !c.is_empty()));
    /// ```
    pub fn link_time_crates() -> Vec<&'static str> {
        let mut crates: Vec<&'static str> = link_time_records()
            .0
            .iter()
            .filter_map(|r| r.registered_at().crate_name())
            .collect();
        crates.sort_unstable();
        crates.dedup();
        crates
    }

    /// A snapshot of the global registry (what `from_pretrained` builds with).
    pub fn global() -> Self {
        crate::registry::snapshot()
    }

    /// The set applied last by `apply_patches` on this thread, while it applies, if any.
    pub fn current() -> Option<Self> {
        crate::applied::current()
    }

    /// A set holding exactly `mapping` (no link-time entries, no global state).
    pub fn from_mapping<I, K>(mapping: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, Replacement)>,
        K: Into<PatchKey>,
    {
        let mut set = Self::empty();
        set.register_patch_mapping(mapping, false)?;
        Ok(set)
    }

    /// The patches, in registration order.
    pub fn records(&self) -> &[Arc<PatchRecord>] {
        &self.inner.records
    }

    /// A snapshot of the patches, as `get_patch_mapping` shows them.
    pub fn mapping(&self) -> PatchMapping {
        PatchMapping::new(self.inner.records.clone())
    }

    /// Whether the set holds no patch.
    pub fn is_empty(&self) -> bool {
        self.inner.records.is_empty()
    }

    /// Adds `mapping` (key -> replacement; a key is a site name or pattern, or a
    /// [`PatchKey`] restricted to module paths). A key already present is an error unless
    /// `overwrite`, which replaces every record under it. A key naming a linked site exactly
    /// must map to a replacement of that site's slot. Nothing changes if any key fails.
    pub fn register_patch_mapping<I, K>(&mut self, mapping: I, overwrite: bool) -> Result<()>
    where
        I: IntoIterator<Item = (K, Replacement)>,
        K: Into<PatchKey>,
    {
        let mut seen = HashSet::new();
        let mut fresh = Vec::new();
        for (key, replacement) in mapping {
            let key: PatchKey = key.into();
            if !seen.insert(key.clone()) {
                return Err(Error::DuplicateKey {
                    key: key.describe(),
                });
            }
            if !overwrite
                && let Some(existing) = self.inner.records.iter().find(|r| r.patch_key() == key)
            {
                return Err(Error::KeyExists {
                    key: key.describe(),
                    existing: existing.replacement().type_name().to_string(),
                });
            }
            check_exact_slot(key.name(), &replacement)?;
            let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
            fresh.push(Arc::new(PatchRecord::new(
                key,
                replacement,
                None,
                RegisteredAt::Runtime,
                seq,
            )?));
        }
        let mut records: Vec<Arc<PatchRecord>> = self
            .inner
            .records
            .iter()
            .filter(|r| !seen.contains(&r.patch_key()))
            .cloned()
            .collect();
        records.extend(fresh);
        *self = Self::from_records(records);
        Ok(())
    }

    /// Removes every record under each of `keys` (a name removes the patches registered
    /// under it without a path restriction; a [`PatchKey`] with a path, those under both).
    /// Unknown keys are an error and nothing changes.
    pub fn unregister_patch_mapping<I, K>(&mut self, keys: I) -> Result<()>
    where
        I: IntoIterator<Item = K>,
        K: Into<PatchKey>,
    {
        let keys: Vec<PatchKey> = keys.into_iter().map(Into::into).collect();
        for key in &keys {
            if !self.inner.records.iter().any(|r| r.patch_key() == *key) {
                let mut known: Vec<String> = self
                    .inner
                    .records
                    .iter()
                    .map(|r| r.patch_key().to_string())
                    .collect();
                known.dedup();
                return Err(Error::UnknownKey {
                    key: key.describe(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                });
            }
        }
        let records = self
            .inner
            .records
            .iter()
            .filter(|r| !keys.contains(&r.patch_key()))
            .cloned()
            .collect();
        *self = Self::from_records(records);
        Ok(())
    }

    /// This set with `other`'s patches added after its own (each keeps its registration
    /// order and priority; the matching rules decide between them as between any patches).
    pub fn merged(&self, other: &PatchSet) -> PatchSet {
        if other.is_empty() {
            return self.clone();
        }
        let mut records = self.inner.records.clone();
        records.extend(other.inner.records.iter().cloned());
        Self::from_records(records)
    }

    /// Removes every patch, link-time ones included.
    pub fn clear_patch_mapping(&mut self) {
        *self = Self::empty();
    }

    /// What `site` (a linked site's [`SiteInfo`](crate::SiteInfo), or a [`SiteKey`]) resolves
    /// to in this set at every path: the winning replacement among the patches without a path
    /// restriction, the rule, what was skipped, and the path-restricted patches that would
    /// apply where their regex matches (cached per site).
    pub fn resolve(&self, site: impl Into<SiteKey>) -> Arc<Resolution> {
        self.resolve_unrestricted(site.into())
    }

    /// What `site` resolves to at module path `path` (`model.layers.3.self_attn.q_proj`): what
    /// [`Builder::build`](crate::Builder::build) builds there.
    pub fn resolve_at(&self, site: impl Into<SiteKey>, path: &str) -> Arc<Resolution> {
        let site = site.into();
        let restricted = self
            .inner
            .records
            .iter()
            .any(|r| r.path().is_some() && r.matcher().rule(site.name).is_some());
        if restricted {
            // Only the sites a path rule names pay a resolution per path.
            Arc::new(matching::resolve(site, Some(path), &self.inner.records))
        } else {
            let unrestricted = self.resolve_unrestricted(site);
            let mut at = (*unrestricted).clone();
            at.path = Some(path.to_string());
            Arc::new(at)
        }
    }

    fn resolve_unrestricted(&self, site: SiteKey) -> Arc<Resolution> {
        let id = (site.name, site.slot_id);
        if let Some(hit) = self
            .inner
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return hit.clone();
        }
        let resolution = Arc::new(matching::resolve(site, None, &self.inner.records));
        self.inner
            .cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_insert(resolution)
            .clone()
    }
}

/// A plain name key naming linked sites of another slot than `replacement`'s is an error at
/// registration: an exact name states intent, and a silent skip would hide the mistake.
fn check_exact_slot(key: &str, replacement: &Replacement) -> Result<()> {
    match crate::site::sites_named(key).find(|s| s.slot_id() != replacement.slot_id()) {
        Some(site) => Err(Error::SlotMismatch {
            key: key.to_string(),
            site: site.name().to_string(),
            site_slot: site.slot(),
            replacement: replacement.type_name().to_string(),
            replacement_slot: replacement.slot(),
        }),
        None => Ok(()),
    }
}

impl Default for PatchSet {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for PatchSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.inner.records.iter().map(|r| r.to_string()))
            .finish()
    }
}
