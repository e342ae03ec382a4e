//! What a build made: every site built, at which path, as which type, chosen by which patch,
//! and what the built module said about itself; printed with repeated layers folded.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::PatchRecord;
use crate::matching::{Outcome, Resolution, Rule};
use crate::replacement::short_type_name;

/// One site built into a model: where, what was asked for, what was built, and why.
#[derive(Clone, Debug)]
pub struct BuiltSite {
    /// Dotted module path.
    pub path: String,
    /// The site's name.
    pub site: &'static str,
    /// Its slot.
    pub slot: &'static str,
    /// The type actually built (the outermost, when replacements wrap each other).
    pub module: &'static str,
    /// The rule and name key of the patch applied, if any.
    pub patch: Option<(Rule, String)>,
    /// The types built inside `module` by [`Builder::build_original`](crate::Builder::build_original),
    /// outermost first (the last one is the site's own type when the chain reached it).
    pub wraps: Vec<&'static str>,
    /// What the built modules said about themselves
    /// ([`Builder::describe`](crate::Builder::describe)): a format and why it was chosen, an
    /// adapter's name.
    pub details: Vec<String>,
    /// How the site resolved at this path: the winner, the chain of candidates, what was
    /// skipped and why.
    pub resolution: Arc<Resolution>,
}

impl BuiltSite {
    /// The patch that chose what was built here, if one did: the answer to "which patch
    /// won at this path?".
    pub fn winner(&self) -> Option<&PatchRecord> {
        match &self.resolution.outcome {
            Outcome::Patched { record, .. } => Some(record),
            _ => None,
        }
    }

    /// Whether the type built here (or a type it wraps) is `T`.
    pub fn built<T: 'static>(&self) -> bool {
        let name = std::any::type_name::<T>();
        self.module == name || self.wraps.contains(&name)
    }

    /// How the row reads in reports: the types, outermost first, with the rule and details.
    fn how(&self) -> String {
        let mut how = match (&self.patch, self.winner()) {
            (Some((rule, _)), Some(record)) => format!(
                "{} by {rule} {}",
                record.replacement().short_name(),
                record.patch_key()
            ),
            (Some((rule, key)), None) => {
                format!("{} by {rule} {key:?}", short_type_name(self.module))
            }
            (None, _) => "original".to_string(),
        };
        for inner in &self.wraps {
            how.push_str(" > ");
            how.push_str(&short_type_name(inner));
        }
        if !self.details.is_empty() {
            how.push_str("; ");
            how.push_str(&self.details.join("; "));
        }
        how
    }
}

/// The sites a model was built from, parents first: a built model's answer to "is my patch
/// applied?".
#[derive(Clone, Debug, Default)]
pub struct BuildReport {
    pub(crate) sites: Vec<BuiltSite>,
}

impl BuildReport {
    /// The sites, parents first.
    pub fn sites(&self) -> &[BuiltSite] {
        &self.sites
    }

    /// The site built at `path`, if any (the outermost when several sites share a path, as a
    /// router and its projection do).
    pub fn at(&self, path: &str) -> Option<&BuiltSite> {
        self.sites.iter().find(|s| s.path == path)
    }

    /// Every site built at `path`, in build order.
    pub fn all_at<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a BuiltSite> + 'a {
        self.sites.iter().filter(move |s| s.path == path)
    }

    /// How many sites were replaced by a patch.
    pub fn patched(&self) -> usize {
        self.sites.iter().filter(|s| s.patch.is_some()).count()
    }

    /// The rows of the report with repeated paths folded: sites whose paths differ only in
    /// one number (the layer index) and that were built the same way become one row whose
    /// path shows the numbers as ranges (`model.layers.0-29.self_attn.q_proj`), in the order
    /// of their first row.
    pub fn folded(&self) -> Vec<(String, &'static str, String)> {
        let mut rows: Vec<(String, &'static str, String, BTreeSet<u64>)> = Vec::new();
        for s in &self.sites {
            let how = s.how();
            let (template, number) = number_template(&s.path);
            match number {
                Some(n) => match rows
                    .iter_mut()
                    .find(|r| r.0 == template && r.1 == s.site && r.2 == how && !r.3.is_empty())
                {
                    Some(row) => {
                        row.3.insert(n);
                    }
                    None => rows.push((template, s.site, how, BTreeSet::from([n]))),
                },
                None => rows.push((template, s.site, how, BTreeSet::new())),
            }
        }
        rows.into_iter()
            .map(|(template, site, how, numbers)| {
                let path = if numbers.is_empty() {
                    template
                } else {
                    template.replacen('\u{0}', &ranges(&numbers), 1)
                };
                (path, site, how)
            })
            .collect()
    }
}

/// `path` with its first all-digit segment replaced by a marker, and that number.
fn number_template(path: &str) -> (String, Option<u64>) {
    let mut number = None;
    let parts: Vec<String> = path
        .split('.')
        .map(|seg| match seg.parse::<u64>() {
            Ok(n) if number.is_none() && !seg.is_empty() => {
                number = Some(n);
                "\u{0}".to_string()
            }
            _ => seg.to_string(),
        })
        .collect();
    (parts.join("."), number)
}

/// `{0, 1, 2, 5}` -> `0-2,5`; one range reads bare (`0-29`), several in braces.
fn ranges(numbers: &BTreeSet<u64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = numbers.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    if out.len() == 1 {
        out.remove(0)
    } else {
        format!("{{{}}}", out.join(","))
    }
}

impl fmt::Display for BuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} sites built, {} patched",
            self.sites.len(),
            self.patched()
        )?;
        let rows = self.folded();
        let path_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
        let site_w = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(4);
        for (path, site, how) in &rows {
            writeln!(f, "  {path:<path_w$}  {site:<site_w$}  {how}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_fold_into_ranges() {
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        assert_eq!(ranges(&set(&[0, 1, 2, 3])), "0-3");
        assert_eq!(ranges(&set(&[0, 2, 3, 7])), "{0,2-3,7}");
        assert_eq!(ranges(&set(&[4])), "4");
        assert_eq!(
            number_template("model.layers.12.mlp.experts.3"),
            ("model.layers.\u{0}.mlp.experts.3".to_string(), Some(12))
        );
        assert_eq!(number_template("lm_head"), ("lm_head".to_string(), None));
    }
}
