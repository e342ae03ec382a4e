//! Strict accounting: the problems a load can have, the one error listing them all, and the
//! [`LoadReport`] of a load that went through.

use std::fmt;
use std::time::Duration;

/// One thing wrong with a load. [`crate::CheckpointSource`] collects them while the model is
/// built (a failing request gets a placeholder so construction continues) and
/// [`crate::Weights::finish`] returns them all in one [`crate::Error::Accounting`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A module asked for a tensor that no checkpoint key and no conversion provides.
    Missing {
        /// The name the module asked for.
        name: String,
        /// The shape it asked for.
        shape: Vec<usize>,
        /// What was looked at (transforms in scope, keys nearby).
        detail: String,
    },
    /// A tensor exists but has another shape than the module asked for.
    Shape {
        /// The name the module asked for.
        name: String,
        /// The shape it asked for.
        expected: Vec<usize>,
        /// The shape the checkpoint (or the conversion) gives.
        found: Vec<usize>,
        /// Where the tensor comes from (key, transform chain).
        detail: String,
    },
    /// A checkpoint tensor (or a converted tensor) that no module asked for.
    Unexpected {
        /// The checkpoint key (or the converted tensor's name).
        key: String,
        /// The transform chain it went through, and why it was not used.
        detail: String,
    },
    /// A conversion could not run (incomplete or mis-shaped sources, failed read).
    Conversion {
        /// The tensor that was asked for, or the unit's targets.
        name: String,
        /// What went wrong, with the converter.
        detail: String,
    },
    /// A stored tensor could not be read: its bytes, dtype or values are not a usable weight
    /// (an integer tensor for a float weight, NaN or infinite values), or memory ran short.
    Unreadable {
        /// The tensor that was asked for.
        name: String,
        /// What is wrong, with the file and key.
        detail: String,
    },
    /// Transforms disagree (two converters claim one name, a re-plan would change a conversion
    /// that already ran).
    Conflict {
        /// What clashed.
        detail: String,
    },
    /// The model ties `alias` to `target` (config `tie_word_embeddings`), but the checkpoint
    /// also stores `alias`: its values would be ignored.
    TiedButStored {
        /// The tied name stored in the checkpoint (`lm_head.weight`).
        alias: String,
        /// The tensor it is tied to (`model.embed_tokens.weight`).
        target: String,
    },
    /// A transform carried by a replacement is malformed.
    InvalidTransform {
        /// Who carried it, and where.
        owner: String,
        /// The transform and what is wrong.
        message: String,
    },
}

impl Problem {
    /// A short label for listings: `missing`, `mis-shaped`, `unexpected`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::Missing { .. } => "missing",
            Problem::Shape { .. } => "mis-shaped",
            Problem::Unexpected { .. } => "unexpected",
            Problem::Conversion { .. } => "conversion",
            Problem::Unreadable { .. } => "unreadable",
            Problem::Conflict { .. } => "conflict",
            Problem::TiedButStored { .. } => "tied",
            Problem::InvalidTransform { .. } => "transform",
        }
    }

    pub(crate) fn sort_key(&self) -> (u8, &str) {
        match self {
            Problem::InvalidTransform { owner, .. } => (0, owner),
            Problem::Conflict { detail } => (1, detail),
            Problem::Missing { name, .. } => (2, name),
            Problem::Shape { name, .. } => (3, name),
            Problem::Conversion { name, .. } => (4, name),
            Problem::Unreadable { name, .. } => (4, name),
            Problem::TiedButStored { alias, .. } => (5, alias),
            Problem::Unexpected { key, .. } => (6, key),
        }
    }
}

fn with_detail(f: &mut fmt::Formatter<'_>, detail: &str) -> fmt::Result {
    if detail.is_empty() {
        Ok(())
    } else {
        write!(f, ": {detail}")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing {
                name,
                shape,
                detail,
            } => {
                write!(f, "missing     {name} {shape:?}")?;
                with_detail(f, detail)
            }
            Problem::Shape {
                name,
                expected,
                found,
                detail,
            } => {
                write!(
                    f,
                    "mis-shaped  {name}: the module asked for {expected:?}, the checkpoint gives {found:?}"
                )?;
                with_detail(f, detail)
            }
            Problem::Unexpected { key, detail } => {
                write!(f, "unexpected  {key}")?;
                with_detail(f, detail)
            }
            Problem::Conversion { name, detail } => write!(f, "conversion  {name}: {detail}"),
            Problem::Unreadable { name, detail } => write!(f, "unreadable  {name}: {detail}"),
            Problem::Conflict { detail } => write!(f, "conflict    {detail}"),
            Problem::TiedButStored { alias, target } => write!(
                f,
                "tied        {alias} is tied to {target} (tie_word_embeddings), but the checkpoint stores it too and its values would be ignored; untie it in the config, or allow it with CheckpointSource::allow_unused"
            ),
            Problem::InvalidTransform { owner, message } => {
                write!(f, "transform   {owner}: {message}")
            }
        }
    }
}

/// The problems of one load, formatted one per line under a count by kind.
/// The detail of an unexpected key that nothing claimed: a plain unused key.
pub(crate) const UNUSED: &str = "no module asked for it";

/// How many lines an accounting error shows before it counts the rest.
pub const SHOWN_PROBLEMS: usize = 24;

/// The module whose checkpoint layout a missing tensor points at: its name without a final
/// `.weight`/`.bias` and without its own last segment (`model.layers.0.mlp.experts` for
/// `model.layers.0.mlp.experts.gate_up_proj`, `model.layers.0.self_attn` for
/// `model.layers.0.self_attn.qkv_proj.weight`).
fn layout_prefix(name: &str) -> Option<&str> {
    let module = name
        .strip_suffix(".weight")
        .or_else(|| name.strip_suffix(".bias"))
        .unwrap_or(name);
    // A top-level parent (`model`) would fold unrelated keys.
    module
        .rsplit_once('.')
        .map(|(parent, _)| parent)
        .filter(|parent| parent.contains('.'))
}

/// The problems as the accounting error lists them: counts by kind, then one line per problem,
/// the plain unused keys under a missing tensor's module folded into one line after it (they
/// are usually the same tensors in the checkpoint's layout), and at most `limit` lines before
/// the rest is counted. `usize::MAX` lists everything.
pub fn format_problems(problems: &[Problem], limit: usize) -> String {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for p in problems {
        match kinds.iter_mut().find(|(k, _)| *k == p.kind()) {
            Some((_, n)) => *n += 1,
            None => kinds.push((p.kind(), 1)),
        }
    }
    let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let mut out = format!(
        "{} problem{} ({})",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        counts.join(", ")
    );
    // Unexpected keys explained by a missing tensor: under its module.
    let prefixes: Vec<Option<&str>> = problems
        .iter()
        .map(|p| match p {
            Problem::Missing { name, .. } => layout_prefix(name),
            _ => None,
        })
        .collect();
    // Each key's ancestors are looked up (linear in the keys, however many are missing).
    let mut by_prefix: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, pre) in prefixes.iter().enumerate() {
        if let Some(pre) = pre {
            by_prefix.entry(pre).or_insert(i);
        }
    }
    let explained_by = |key: &str| {
        if by_prefix.is_empty() {
            return None;
        }
        key.match_indices('.')
            .filter_map(|(at, _)| by_prefix.get(&key[..at]).copied())
            .min()
    };
    let mut folded: Vec<Vec<&str>> = vec![Vec::new(); problems.len()];
    let mut lines: Vec<String> = Vec::new();
    // Only plain unused keys fold: a key with a transform chain says something of its own.
    let folds = |p: &Problem| match p {
        Problem::Unexpected { key, detail } if detail == UNUSED => explained_by(key),
        _ => None,
    };
    for p in problems {
        if let (Some(i), Problem::Unexpected { key, .. }) = (folds(p), p) {
            folded[i].push(key);
        }
    }
    for (i, p) in problems.iter().enumerate() {
        if folds(p).is_none() {
            lines.push(p.to_string());
        }
        if !folded[i].is_empty() {
            let keys = &folded[i];
            let shown: Vec<&str> = keys.iter().take(3).copied().collect();
            let more = keys.len().saturating_sub(shown.len());
            let prefix = prefixes[i].unwrap_or_default();
            lines.push(format!(
                "unexpected  {} checkpoint key{} under {prefix} (the checkpoint's layout of it): {}{}",
                keys.len(),
                if keys.len() == 1 { "" } else { "s" },
                shown.join(", "),
                if more > 0 {
                    format!(", and {more} more")
                } else {
                    String::new()
                }
            ));
        }
    }
    let hidden = lines.len().saturating_sub(limit);
    for line in lines.iter().take(limit) {
        out.push_str("\n  ");
        out.push_str(line);
    }
    if hidden > 0 {
        out.push_str(&format!(
            "\n  ... and {hidden} more (the error's `problems` holds all; `format_problems(&problems, usize::MAX)` lists them)"
        ));
    }
    out
}

/// What a load did: which transforms fired, how much was read, how long it took.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// The checkpoint folder.
    pub checkpoint: String,
    /// Checkpoint tensors read from the files (a tensor read twice counts twice).
    pub tensors_read: usize,
    /// Bytes read from the files.
    pub bytes_read: u64,
    /// Requests served (tensors handed to modules).
    pub tensors_served: usize,
    /// Conversion units run.
    pub units_run: usize,
    /// Every transform that changed something: its description, who supplied it, and how many
    /// keys it renamed or units it ran.
    pub transforms: Vec<FiredTransform>,
    /// Time spent serving requests (reading, converting).
    pub elapsed: Duration,
}

/// One transform that fired during a load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FiredTransform {
    /// `WeightRenaming(...)` or `WeightConverter(...)`.
    pub transform: String,
    /// `registry`, or the replacement type that carried it (counts summed over its paths).
    pub owner: String,
    /// Keys renamed (renaming) or units run (converter).
    pub count: usize,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} tensors served, {} read ({:.1} MB), {} conversion units, {:.3} s",
            self.checkpoint,
            self.tensors_served,
            self.tensors_read,
            self.bytes_read as f64 / 1e6,
            self.units_run,
            self.elapsed.as_secs_f64()
        )?;
        for t in &self.transforms {
            writeln!(f, "  {} x{} ({})", t.transform, t.count, t.owner)?;
        }
        Ok(())
    }
}
