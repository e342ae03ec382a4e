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
pub(crate) fn format_problems(problems: &[Problem]) -> String {
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
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
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
