//! `PatchSet`: an immutable set of patches with a resolution cache.

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::mapping::link_time_records;
use crate::matching::{self, Resolution, SiteKey};
use crate::{Error, PatchMapping, PatchRecord, RegisteredAt, Replacement, Result};

/// Run-time registrations are numbered from 1 in call order, across all sets; link-time entries
/// are 0.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(1);

/// A set of patches a model is built with: the global registry's snapshot, a thread's
/// `apply_patches` scope, or a set of your own handed to a [`Builder`](crate::Builder) with no
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

    /// The set of the innermost `apply_patches` scope on this thread, if any.
    pub fn current() -> Option<Self> {
        crate::applied::current()
    }

    /// A set holding exactly `mapping` (no link-time entries, no global state).
    pub fn from_mapping<I, K>(mapping: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, Replacement)>,
        K: Into<String>,
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

    /// Adds `mapping` (key -> replacement). A key already present is an error unless
    /// `overwrite`, which replaces every record under it. A key naming a linked site exactly
    /// must map to a replacement of that site's slot. Nothing changes if any key fails.
    pub fn register_patch_mapping<I, K>(&mut self, mapping: I, overwrite: bool) -> Result<()>
    where
        I: IntoIterator<Item = (K, Replacement)>,
        K: Into<String>,
    {
        let mut seen = HashSet::new();
        let mut fresh = Vec::new();
        for (key, replacement) in mapping {
            let key = key.into();
            if !seen.insert(key.clone()) {
                return Err(Error::DuplicateKey { key });
            }
            if !overwrite && let Some(existing) = self.inner.records.iter().find(|r| r.key() == key)
            {
                return Err(Error::KeyExists {
                    key,
                    existing: existing.replacement().type_name().to_string(),
                });
            }
            check_exact_slot(&key, &replacement)?;
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
            .filter(|r| !seen.contains(r.key()))
            .cloned()
            .collect();
        records.extend(fresh);
        *self = Self::from_records(records);
        Ok(())
    }

    /// Removes every record under each of `keys`. Unknown keys are an error and nothing changes.
    pub fn unregister_patch_mapping<I, K>(&mut self, keys: I) -> Result<()>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let keys: Vec<K> = keys.into_iter().collect();
        for key in &keys {
            let key = key.as_ref();
            if !self.inner.records.iter().any(|r| r.key() == key) {
                let mut known: Vec<&str> = self.inner.records.iter().map(|r| r.key()).collect();
                known.dedup();
                return Err(Error::UnknownKey {
                    key: key.to_string(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known
                            .iter()
                            .map(|k| format!("{k:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                });
            }
        }
        let records = self
            .inner
            .records
            .iter()
            .filter(|r| !keys.iter().any(|k| k.as_ref() == r.key()))
            .cloned()
            .collect();
        *self = Self::from_records(records);
        Ok(())
    }

    /// Removes every patch, link-time ones included.
    pub fn clear_patch_mapping(&mut self) {
        *self = Self::empty();
    }

    /// What `site` (a linked site's [`SiteInfo`](crate::SiteInfo), or a [`SiteKey`]) resolves to in this set:
    /// the winning replacement, the rule, and what was skipped (cached per site).
    pub fn resolve(&self, site: impl Into<SiteKey>) -> Arc<Resolution> {
        let site = site.into();
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
        let resolution = Arc::new(matching::resolve(site, &self.inner.records));
        self.inner
            .cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_insert(resolution)
            .clone()
    }
}

/// A plain key naming linked sites of another slot than `replacement`'s is an error at
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
