//! The matching rules: which registered patch, if any, replaces a site.
//!
//! For a site named `N` filling slot `S`, built at module path `P`
//! (`model.layers.3.self_attn.q_proj`), against the patches of a [`PatchSet`](crate::PatchSet):
//!
//! 1. **Candidates.** A patch is a candidate when its key equals `N` (an *exact* match) or, read
//!    as a regular expression, matches anywhere in `N` (a *pattern* match: `re.search`
//!    semantics, so anchor with `^`/`$` to match whole names), and, when the patch is restricted
//!    to paths ([`PatchKey::with_path`](crate::PatchKey::with_path)), its path regex matches
//!    anywhere in `P` (`re.search` again). Resolved without a path (`explain` of a model type),
//!    path-restricted patches are listed as conditional instead.
//! 2. **Slots.** A candidate whose replacement fills another slot than `S` is *skipped*, with
//!    the reason, and never applied: `".*Attention"` with an attention replacement patches
//!    `BertSelfAttention` but skips the container `BertAttention`. An exact match with the wrong
//!    slot is a *conflict* instead (an exact name states intent): building the site fails and
//!    `explain` shows why.
//! 3. **Order.** The remaining candidates are ordered by: restricted to paths before
//!    unrestricted (a path rule is more specific than a name alone); then exact before pattern;
//!    then higher priority; then later registration (run-time registrations are numbered in
//!    call order, link-time `#[patch]` entries all count as registered together, before any
//!    run-time one). The first one wins; every other candidate is skipped with the reason it
//!    lost.
//! 4. **Ties.** If the runner-up ties with the winner on all four (two link-time entries of
//!    equal priority, from different crates, say) and builds a different type, the site has a
//!    *conflict*: it is reported, never settled silently. Entries that build the same type
//!    do not conflict.
//! 5. **Wrapping.** A winner that wraps what the site would have built without it
//!    ([`Builder::build_original`](crate::Builder::build_original)) gets the next candidate in
//!    this order, built the same way, down to the site's own type: a LoRA projection chosen by
//!    path wraps the quantized projection a topology chose for every projection, which wraps
//!    the site's own `Linear`. [`Resolution::chain`] is that order.

use std::any::TypeId;
use std::cmp::Reverse;
use std::fmt;
use std::sync::Arc;

use regex::Regex;

use crate::{Error, PatchRecord, Result};

/// A key naming sites as patch keys do (rule 1 above): equal to a site's name (an exact
/// match), or a regular expression matching anywhere in it (a pattern match). What patches,
/// and whatever else selects sites by name (output recorders), match with.
#[derive(Clone, Debug)]
pub struct SiteMatcher {
    key: String,
    regex: Regex,
}

impl SiteMatcher {
    /// The matcher of `key`; an error naming the key if it is not a valid regex.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        let regex = Regex::new(&key).map_err(|e| Error::InvalidPattern {
            key: key.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { key, regex })
    }

    /// The key as given.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How the key matches the site named `name`, if it does.
    pub fn rule(&self, name: &str) -> Option<Rule> {
        if self.key == name {
            Some(Rule::Exact)
        } else if self.regex.is_match(name) {
            Some(Rule::Pattern)
        } else {
            None
        }
    }
}

/// What a site is matched as: its name and the slot it fills.
#[derive(Clone, Copy, Debug)]
pub struct SiteKey {
    /// The site's name (`LlamaAttention`).
    pub name: &'static str,
    /// Its slot's name (`Attention`).
    pub slot: &'static str,
    /// Its slot's identity.
    pub slot_id: TypeId,
}

/// How a patch matched a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// The key equals the site's name.
    Exact,
    /// The key, as a regex, matches somewhere in the site's name.
    Pattern,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Exact => "exact",
            Rule::Pattern => "pattern",
        })
    }
}

/// The order candidates are ranked in (rule 3): path-restricted first, then exact, then higher
/// priority, then later registration.
fn rank(rule: Rule, r: &PatchRecord) -> (bool, Rule, Reverse<i32>, Reverse<u64>) {
    (
        r.path().is_none(),
        rule,
        Reverse(r.priority()),
        Reverse(r.seq()),
    )
}

/// Why a matching patch was not applied to a site.
#[derive(Clone, Debug)]
pub enum SkipReason {
    /// The replacement fills another slot than the site.
    SlotMismatch {
        /// The slot the replacement fills.
        replacement_slot: &'static str,
    },
    /// Another patch won.
    Overridden {
        /// The winner's key.
        by: String,
        /// Which rule decided (`"exact name wins over pattern"`, ...).
        why: &'static str,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::SlotMismatch { replacement_slot } => {
                write!(f, "replacement fills slot {replacement_slot}")
            }
            SkipReason::Overridden { by, why } => write!(f, "{by:?} wins: {why}"),
        }
    }
}

/// A patch that matched a site but was not applied.
#[derive(Clone, Debug)]
pub struct Skipped {
    /// The patch.
    pub record: Arc<PatchRecord>,
    /// How it matched.
    pub rule: Rule,
    /// Why it was not applied.
    pub reason: SkipReason,
}

/// What a site resolves to.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// No patch applies: the site builds itself.
    Original,
    /// `record`'s replacement is built instead, chosen by `rule`.
    Patched {
        /// The winning patch.
        record: Arc<PatchRecord>,
        /// How it matched.
        rule: Rule,
    },
    /// The patches contradict each other for this site (see the module docs).
    Conflict(Conflict),
}

/// A contradiction that stops a site from being built.
#[derive(Clone, Debug)]
pub enum Conflict {
    /// A key naming the site exactly maps it to a replacement of another slot.
    SlotMismatch(Arc<PatchRecord>),
    /// Two link-time patches tie and build different types.
    Ambiguous(Arc<PatchRecord>, Arc<PatchRecord>),
}

impl Conflict {
    /// The error building the site reports.
    pub fn to_error(&self, site: &SiteKey) -> Error {
        match self {
            Conflict::SlotMismatch(r) => Error::SlotMismatch {
                key: r.key().to_string(),
                site: site.name.to_string(),
                site_slot: site.slot,
                replacement: r.replacement().type_name().to_string(),
                replacement_slot: r.replacement().slot(),
            },
            Conflict::Ambiguous(a, b) => Error::Ambiguous {
                site: site.name.to_string(),
                first: format!("{a} ({})", a.registered_at()),
                second: format!("{b} ({})", b.registered_at()),
            },
        }
    }
}

/// The full answer for one site: the outcome and every match that was set aside.
#[derive(Clone, Debug)]
pub struct Resolution {
    /// The site.
    pub site: SiteKey,
    /// The module path it was resolved at; `None` when resolved for every path at once (then
    /// path-restricted patches are in [`Resolution::conditional`], not candidates).
    pub path: Option<String>,
    /// What it builds.
    pub outcome: Outcome,
    /// Every applicable candidate in rule 3's order, winner first (empty on a conflict): what
    /// [`Builder::build_original`](crate::Builder::build_original) descends through.
    pub chain: Vec<(Arc<PatchRecord>, Rule)>,
    /// Patches that matched but were not applied, with the reason.
    pub skipped: Vec<Skipped>,
    /// Resolved without a path: the path-restricted patches whose name key matches, which
    /// apply at the paths their regex matches.
    pub conditional: Vec<(Arc<PatchRecord>, Rule)>,
}

/// Applies the rules of this module to `site` at `path` (or at every path, `None`) over
/// `records`.
pub(crate) fn resolve(
    site: SiteKey,
    path: Option<&str>,
    records: &[Arc<PatchRecord>],
) -> Resolution {
    let mut skipped = Vec::new();
    let mut conditional = Vec::new();
    let mut eligible: Vec<(Rule, &Arc<PatchRecord>)> = Vec::new();
    let mut exact_conflict = None;
    for r in records {
        let Some(rule) = r.matcher().rule(site.name) else {
            continue;
        };
        match path {
            Some(p) if !r.applies_at(p) => continue,
            None if r.path().is_some() => {
                if r.replacement().slot_id() == site.slot_id {
                    conditional.push((r.clone(), rule));
                }
                continue;
            }
            _ => {}
        }
        if r.replacement().slot_id() != site.slot_id {
            if rule == Rule::Exact && exact_conflict.is_none() {
                exact_conflict = Some(r.clone());
            }
            skipped.push(Skipped {
                record: r.clone(),
                rule,
                reason: SkipReason::SlotMismatch {
                    replacement_slot: r.replacement().slot(),
                },
            });
            continue;
        }
        eligible.push((rule, r));
    }
    let path = path.map(str::to_string);
    if let Some(r) = exact_conflict {
        return Resolution {
            site,
            path,
            outcome: Outcome::Conflict(Conflict::SlotMismatch(r)),
            chain: Vec::new(),
            skipped,
            conditional,
        };
    }
    // Rule 3's order; stable for equal keys.
    eligible.sort_by_key(|(rule, r)| rank(*rule, r));
    let Some(&(win_rule, winner)) = eligible.first() else {
        return Resolution {
            site,
            path,
            outcome: Outcome::Original,
            chain: Vec::new(),
            skipped,
            conditional,
        };
    };
    let mut conflict = None;
    for &(rule, r) in &eligible[1..] {
        let why = if r.path().is_some() != winner.path().is_some() {
            "a path rule wins over a name alone"
        } else if rule != win_rule {
            "exact name wins over pattern"
        } else if r.priority() != winner.priority() {
            "higher priority"
        } else if r.seq() != winner.seq() {
            "registered later"
        } else if !r.replacement().same_as(winner.replacement()) {
            if conflict.is_none() {
                conflict = Some(Conflict::Ambiguous(winner.clone(), r.clone()));
            }
            "equal rule, priority and registration: a conflict"
        } else {
            "same replacement"
        };
        skipped.push(Skipped {
            record: r.clone(),
            rule,
            reason: SkipReason::Overridden {
                by: winner.patch_key().to_string(),
                why,
            },
        });
    }
    let (outcome, chain) = match conflict {
        Some(c) => (Outcome::Conflict(c), Vec::new()),
        None => (
            Outcome::Patched {
                record: winner.clone(),
                rule: win_rule,
            },
            eligible
                .iter()
                .map(|(rule, r)| ((*r).clone(), *rule))
                .collect(),
        ),
    };
    Resolution {
        site,
        path,
        outcome,
        chain,
        skipped,
        conditional,
    }
}
