//! Patch records: a key (exact name or pattern) mapped to a replacement, where it came from,
//! and the link-time entries `#[patch]` submits.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::matching::SiteMatcher;

use crate::{Error, Replacement, Result};

/// A patch submitted at link time by `#[patch("key")]`.
#[derive(Debug)]
pub struct PatchEntry {
    key: &'static str,
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
            priority,
            label,
            module_path,
            file,
            line,
            replacement,
        }
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
    replacement: Replacement,
    label: Option<String>,
    registered_at: RegisteredAt,
    /// Registration order: 0 for every link-time entry, then increasing per run-time
    /// registration.
    seq: u64,
}

impl PatchRecord {
    pub(crate) fn new(
        key: String,
        replacement: Replacement,
        label: Option<String>,
        registered_at: RegisteredAt,
        seq: u64,
    ) -> Result<Self> {
        Ok(Self {
            matcher: SiteMatcher::new(key)?,
            replacement,
            label,
            registered_at,
            seq,
        })
    }

    /// The key as registered (an exact site name or a pattern).
    pub fn key(&self) -> &str {
        self.matcher.key()
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
        write!(f, "{:?} -> {}", self.key(), self.replacement.short_name())
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
            match PatchRecord::new(
                e.key.to_string(),
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

    /// The records registered under `key`.
    pub fn get(&self, key: &str) -> impl Iterator<Item = &PatchRecord> {
        self.iter().filter(move |r| r.key() == key)
    }

    /// Whether a patch is registered under `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).next().is_some()
    }

    /// The keys, in registration order (a key registered by two crates appears twice).
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
            .map(|r| r.key().len() + 2)
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
                format!("{:?}", r.key()),
                r.replacement.type_name(),
                r.replacement.slot(),
                r.priority(),
                r.registered_at,
            )?;
        }
        Ok(())
    }
}
