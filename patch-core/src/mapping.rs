//! Patch records: a key (a site name or pattern, optionally restricted to module paths) mapped
//! to a replacement, where it came from, and the link-time entries `#[patch]` submits.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::PatchKey;
use crate::key::PathMatcher;
use crate::matching::SiteMatcher;

use crate::{Error, Replacement, Result};

/// A patch submitted at link time by `#[patch("key")]`.
#[derive(Debug)]
pub struct PatchEntry {
    key: &'static str,
    path: Option<&'static str>,
    priority: i32,
    label: Option<&'static str>,
    module_path: &'static str,
    file: &'static str,
    line: u32,
    replacement: fn() -> Replacement,
}

impl PatchEntry {
    /// The entry for the replacement `replacement` returns, under `key` (used by `#[patch]`).
    pub const fn new(
        key: &'static str,
        priority: i32,
        label: Option<&'static str>,
        module_path: &'static str,
        file: &'static str,
        line: u32,
        replacement: fn() -> Replacement,
    ) -> Self {
        Self {
            key,
            path: None,
            priority,
            label,
            module_path,
            file,
            line,
            replacement,
        }
    }

    /// The same entry restricted to module paths matching `path` (used by
    /// `#[patch(.., path = "regex")]`, which checks the regex at compile time).
    pub const fn at_path(mut self, path: &'static str) -> Self {
        self.path = Some(path);
        self
    }
}

inventory::collect!(PatchEntry);

/// Where a patch was registered: a `#[patch]` in a linked crate, or at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisteredAt {
    /// `#[patch]` in a linked crate.
    LinkTime {
        /// Module of the replacement type.
        module_path: &'static str,
        /// Source file of the attribute.
        file: &'static str,
        /// Line of the attribute.
        line: u32,
    },
    /// `register_patch_mapping` (or a `PatchSet` method) at run time.
    Runtime,
}

impl fmt::Display for RegisteredAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisteredAt::LinkTime { file, line, .. } => write!(
                f,
                "#[patch] in crate {} at {file}:{line}",
                self.crate_name().unwrap_or("?")
            ),
            RegisteredAt::Runtime => f.write_str("run time"),
        }
    }
}

impl RegisteredAt {
    /// The crate a link-time patch was defined in (`None` for run-time registrations).
    pub fn crate_name(&self) -> Option<&'static str> {
        match self {
            RegisteredAt::LinkTime { module_path, .. } => {
                Some(module_path.split("::").next().unwrap_or(module_path))
            }
            RegisteredAt::Runtime => None,
        }
    }
}

/// One registered patch: a key, the replacement it maps to, its priority and where it was
/// registered.
#[derive(Debug)]
pub struct PatchRecord {
    matcher: SiteMatcher,
    path: Option<PathMatcher>,
    replacement: Replacement,
    label: Option<String>,
    registered_at: RegisteredAt,
    /// Registration order: 0 for every link-time entry, then increasing per run-time
    /// registration.
    seq: u64,
}

impl PatchRecord {
    pub(crate) fn new(
        key: PatchKey,
        replacement: Replacement,
        label: Option<String>,
        registered_at: RegisteredAt,
        seq: u64,
    ) -> Result<Self> {
        Ok(Self {
            matcher: SiteMatcher::new(key.name)?,
            path: key.path.as_deref().map(PathMatcher::new).transpose()?,
            replacement,
            label,
            registered_at,
            seq,
        })
    }

    /// The name key as registered (an exact site name or a pattern).
    pub fn key(&self) -> &str {
        self.matcher.key()
    }

    /// The module-path regex the patch is restricted to, if any.
    pub fn path(&self) -> Option<&str> {
        self.path.as_ref().map(|p| p.source.as_str())
    }

    /// The whole key: name and path restriction.
    pub fn patch_key(&self) -> PatchKey {
        PatchKey {
            name: self.key().to_string(),
            path: self.path().map(str::to_string),
        }
    }

    /// Whether the patch applies at module path `path` (always, when it has no path
    /// restriction).
    pub fn applies_at(&self, path: &str) -> bool {
        self.path.as_ref().is_none_or(|p| p.is_match(path))
    }

    /// How the key matches site names.
    pub fn matcher(&self) -> &SiteMatcher {
        &self.matcher
    }

    /// The replacement.
    pub fn replacement(&self) -> &Replacement {
        &self.replacement
    }

    /// Its priority (higher wins among matches of the same kind).
    pub fn priority(&self) -> i32 {
        self.replacement.priority()
    }

    /// The human label given with `#[patch(name = "...")]`, if any.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// Where it came from.
    pub fn registered_at(&self) -> &RegisteredAt {
        &self.registered_at
    }

    /// Registration order (0 for link-time entries).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the key is a plain name (no regex metacharacters): such a key is meant to name
    /// one site exactly.
    pub fn is_plain_name(&self) -> bool {
        regex::escape(self.key()) == self.key()
    }
}

impl fmt::Display for PatchRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}",
            self.patch_key(),
            self.replacement.short_name()
        )
    }
}

/// The link-time records, built once from every `#[patch]` entry of every linked crate and
/// sorted by key, then replacement type, then module; plus the entries whose key did not compile.
///
/// `#[patch]` compiles its key with the same regex engine at compile time, so the second list
/// is empty unless an entry was produced by other means; `explain` reports it when it is not.
pub(crate) fn link_time_records() -> &'static (Vec<Arc<PatchRecord>>, Vec<Error>) {
    static RECORDS: OnceLock<(Vec<Arc<PatchRecord>>, Vec<Error>)> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let mut entries: Vec<&'static PatchEntry> =
            inventory::iter::<PatchEntry>.into_iter().collect();
        entries.sort_by_key(|e| {
            (
                e.key,
                e.path,
                (e.replacement)().type_name(),
                e.module_path,
                e.file,
                e.line,
            )
        });
        let mut records = Vec::new();
        let mut errors = Vec::new();
        for e in entries {
            let registered_at = RegisteredAt::LinkTime {
                module_path: e.module_path,
                file: e.file,
                line: e.line,
            };
            let replacement = (e.replacement)().with_priority(e.priority);
            let key = PatchKey {
                name: e.key.to_string(),
                path: e.path.map(str::to_string),
            };
            match PatchRecord::new(
                key,
                replacement,
                e.label.map(str::to_string),
                registered_at,
                0,
            ) {
                Ok(r) => records.push(Arc::new(r)),
                Err(err) => errors.push(err),
            }
        }
        (records, errors)
    })
}

/// A snapshot of registered patches, as `get_patch_mapping` returns it: in registration order
/// (link-time entries first).
#[derive(Clone, Debug, Default)]
pub struct PatchMapping {
    records: Vec<Arc<PatchRecord>>,
}

impl PatchMapping {
    pub(crate) fn new(records: Vec<Arc<PatchRecord>>) -> Self {
        Self { records }
    }

    /// The records, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &PatchRecord> {
        self.records.iter().map(|r| &**r)
    }

    /// The records registered under `key` (a name, with or without a path restriction: a
    /// `&str` names the patches without one).
    pub fn get(&self, key: impl Into<PatchKey>) -> impl Iterator<Item = &PatchRecord> {
        let key = key.into();
        self.iter().filter(move |r| r.patch_key() == key)
    }

    /// Whether a patch is registered under `key`.
    pub fn contains_key(&self, key: impl Into<PatchKey>) -> bool {
        self.get(key).next().is_some()
    }

    /// The name keys, in registration order (a key registered by two crates, or under two
    /// paths, appears twice).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(PatchRecord::key)
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl fmt::Display for PatchMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.records.is_empty() {
            return f.write_str("no patches registered\n");
        }
        let key_w = self
            .records
            .iter()
            .map(|r| r.patch_key().to_string().len())
            .max()
            .unwrap_or(0);
        let ty_w = self
            .records
            .iter()
            .map(|r| r.replacement.type_name().len())
            .max()
            .unwrap_or(0);
        for r in &self.records {
            writeln!(
                f,
                "{:<key_w$}  {:<ty_w$}  slot {:<12} priority {:<4} {}",
                r.patch_key().to_string(),
                r.replacement.type_name(),
                r.replacement.slot(),
                r.priority(),
                r.registered_at,
            )?;
        }
        Ok(())
    }
}
