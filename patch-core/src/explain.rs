//! `explain`: for a set of sites, which replacement each gets and by which rule, what matched
//! but was skipped and why, and which patches match none of them.

use std::fmt;
use std::sync::Arc;

use crate::mapping::link_time_records;
use crate::matching::{Outcome, Resolution, SiteKey};
use crate::{Error, PatchRecord, PatchSet, RegisteredAt};

/// The answer to "is my patch applied, and if not, why?" for a list of sites.
#[derive(Clone, Debug)]
pub struct Explain {
    patches: Vec<Arc<PatchRecord>>,
    sites: Vec<Arc<Resolution>>,
    unmatched: Vec<Arc<PatchRecord>>,
    link_errors: Vec<String>,
}

impl PatchSet {
    /// Explains how every linked site resolves in this set.
    pub fn explain_all(&self) -> Explain {
        self.explain(crate::sites().iter().copied())
    }

    /// Explains how `sites` (linked sites' [`SiteInfo`](crate::SiteInfo)s, or [`SiteKey`]s) resolve in this set.
    pub fn explain<K: Into<SiteKey>>(&self, sites: impl IntoIterator<Item = K>) -> Explain {
        let sites: Vec<Arc<Resolution>> = sites.into_iter().map(|k| self.resolve(k)).collect();
        let unmatched = self
            .records()
            .iter()
            .filter(|r| {
                !sites
                    .iter()
                    .any(|s| r.matcher().rule(s.site.name).is_some())
            })
            .cloned()
            .collect();
        Explain {
            patches: self.records().to_vec(),
            sites,
            unmatched,
            link_errors: link_time_records().1.iter().map(Error::to_string).collect(),
        }
    }
}

/// Explains how `sites` resolve against the global registry as it is now.
pub fn explain<K: Into<SiteKey>>(sites: impl IntoIterator<Item = K>) -> Explain {
    PatchSet::global().explain(sites)
}

impl Explain {
    /// One resolution per site, in the order asked.
    pub fn sites(&self) -> &[Arc<Resolution>] {
        &self.sites
    }

    /// The resolution of the site named `name`, if it was asked about.
    pub fn site(&self, name: &str) -> Option<&Resolution> {
        self.sites
            .iter()
            .map(|r| &**r)
            .find(|r| r.site.name == name)
    }

    /// Patches that match none of the sites asked about.
    pub fn unmatched(&self) -> &[Arc<PatchRecord>] {
        &self.unmatched
    }

    /// Sites whose patches contradict each other (building them fails), with the error.
    pub fn conflicts(&self) -> impl Iterator<Item = (&Resolution, Error)> {
        self.sites.iter().filter_map(|r| match &r.outcome {
            Outcome::Conflict(c) => Some((&**r, c.to_error(&r.site))),
            _ => None,
        })
    }

    /// Whether every site can be built (no conflict).
    pub fn is_ok(&self) -> bool {
        self.conflicts().next().is_none() && self.link_errors.is_empty()
    }
}

impl fmt::Display for Explain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let link = self
            .patches
            .iter()
            .filter(|r| matches!(r.registered_at(), RegisteredAt::LinkTime { .. }))
            .count();
        let plural =
            |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        writeln!(
            f,
            "patch explain: {} {}, {} {} ({} link-time, {} run-time)",
            self.sites.len(),
            plural(self.sites.len(), "site", "sites"),
            self.patches.len(),
            plural(self.patches.len(), "patch", "patches"),
            link,
            self.patches.len() - link
        )?;
        let name_w = self
            .sites
            .iter()
            .map(|r| r.site.name.len())
            .max()
            .unwrap_or(0)
            .max(4);
        let slot_w = self
            .sites
            .iter()
            .map(|r| r.site.slot.len())
            .max()
            .unwrap_or(0)
            .max(4);
        let builds: Vec<String> = self
            .sites
            .iter()
            .map(|r| match &r.outcome {
                Outcome::Original => "original".to_string(),
                Outcome::Patched { record, .. } => record.replacement().short_name().to_string(),
                Outcome::Conflict(_) => "CONFLICT".to_string(),
            })
            .collect();
        let build_w = builds.iter().map(String::len).max().unwrap_or(0).max(6);
        writeln!(f)?;
        writeln!(
            f,
            "  {:<name_w$}  {:<slot_w$}  {:<build_w$}  rule",
            "site", "slot", "builds"
        )?;
        for (r, builds) in self.sites.iter().zip(&builds) {
            let rule = match &r.outcome {
                Outcome::Original => "none".to_string(),
                Outcome::Patched { record, rule } => {
                    format!("{rule} {} ({})", record.patch_key(), record.registered_at())
                }
                Outcome::Conflict(c) => c.to_error(&r.site).to_string(),
            };
            writeln!(
                f,
                "  {:<name_w$}  {:<slot_w$}  {:<build_w$}  {rule}",
                r.site.name, r.site.slot, builds
            )?;
            for (record, rule) in &r.conditional {
                writeln!(
                    f,
                    "      where the path matches: {record} ({rule}, {})",
                    record.registered_at()
                )?;
            }
            for s in &r.skipped {
                writeln!(f, "      skipped {} ({}): {}", s.record, s.rule, s.reason)?;
            }
        }
        if !self.unmatched.is_empty() {
            writeln!(f)?;
            writeln!(f, "patches matching no site above:")?;
            for r in &self.unmatched {
                writeln!(f, "  {r} ({})", r.registered_at())?;
            }
        }
        if !self.link_errors.is_empty() {
            writeln!(f)?;
            writeln!(f, "link-time patches that could not be registered:")?;
            for e in &self.link_errors {
                writeln!(f, "  {e}")?;
            }
        }
        Ok(())
    }
}
