//! Weight transforms: how a checkpoint's tensor layout maps to the layout built modules ask for.
//!
//! The names follow transformers' `conversion_mapping`: [`WeightRenaming`] renames keys,
//! [`WeightConverter`] turns a group of source tensors into a group of target tensors through a
//! chain of [`Op`]s. Every op has a reverse, used when saving.

use std::fmt;

/// One step of a [`WeightConverter`] chain. Each has a reverse ([`Op::reverse`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Concatenate the group's tensors along `dim` (reverse: [`Op::Chunk`]).
    Concatenate {
        /// Dimension to concatenate along.
        dim: usize,
    },
    /// Split one tensor into as many equal chunks as there are targets (reverse: [`Op::Concatenate`]).
    Chunk {
        /// Dimension to split along.
        dim: usize,
    },
    /// Stack the tensors captured by a `*` glob (one per module-list index) along a new `dim`
    /// (reverse: [`Op::SplitModulelist`]).
    MergeModulelist {
        /// Position of the new dimension.
        dim: usize,
    },
    /// Unstack `dim` into one tensor per module-list index (reverse: [`Op::MergeModulelist`]).
    SplitModulelist {
        /// Dimension to unstack.
        dim: usize,
    },
    /// Swap two dimensions (its own reverse).
    Transpose {
        /// First dimension.
        dim0: usize,
        /// Second dimension.
        dim1: usize,
    },
    /// Interleave the group's tensors row by row along `dim` (reverse: de-interleave).
    Interleave {
        /// Dimension to interleave along.
        dim: usize,
    },
}

impl Op {
    /// The op that undoes this one.
    pub fn reverse(&self) -> Op {
        match *self {
            Op::Concatenate { dim } => Op::Chunk { dim },
            Op::Chunk { dim } => Op::Concatenate { dim },
            Op::MergeModulelist { dim } => Op::SplitModulelist { dim },
            Op::SplitModulelist { dim } => Op::MergeModulelist { dim },
            Op::Transpose { dim0, dim1 } => Op::Transpose { dim0, dim1 },
            // De-interleaving is represented by the same op on the reverse path.
            Op::Interleave { dim } => Op::Interleave { dim },
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Concatenate { dim } => write!(f, "Concatenate(dim={dim})"),
            Op::Chunk { dim } => write!(f, "Chunk(dim={dim})"),
            Op::MergeModulelist { dim } => write!(f, "MergeModulelist(dim={dim})"),
            Op::SplitModulelist { dim } => write!(f, "SplitModulelist(dim={dim})"),
            Op::Transpose { dim0, dim1 } => write!(f, "Transpose({dim0}, {dim1})"),
            Op::Interleave { dim } => write!(f, "Interleave(dim={dim})"),
        }
    }
}

/// Renames checkpoint keys: every match of `pattern` (a regex) is replaced by `replacement`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WeightRenaming {
    /// Regex matched against checkpoint keys.
    pub pattern: String,
    /// Replacement text (may use `$1`-style groups).
    pub replacement: String,
}

impl WeightRenaming {
    /// A renaming of `pattern` into `replacement`.
    pub fn new(pattern: impl Into<String>, replacement: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            replacement: replacement.into(),
        }
    }
}

/// Turns the checkpoint tensors matching `source_patterns` into the tensors named by
/// `target_patterns`, through `operations` (run in order on load, reversed on save).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WeightConverter {
    /// Key fragments of the source tensors; `*` captures a module-list index.
    pub source_patterns: Vec<String>,
    /// Key fragments of the produced tensors.
    pub target_patterns: Vec<String>,
    /// The op chain.
    pub operations: Vec<Op>,
}

impl WeightConverter {
    /// A converter from `source_patterns` to `target_patterns` through `operations`.
    pub fn new<S, T>(
        source_patterns: impl IntoIterator<Item = S>,
        target_patterns: impl IntoIterator<Item = T>,
        operations: impl IntoIterator<Item = Op>,
    ) -> Self
    where
        S: Into<String>,
        T: Into<String>,
    {
        Self {
            source_patterns: source_patterns.into_iter().map(Into::into).collect(),
            target_patterns: target_patterns.into_iter().map(Into::into).collect(),
            operations: operations.into_iter().collect(),
        }
    }
}

/// A renaming or a converter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transform {
    /// See [`WeightRenaming`].
    Renaming(WeightRenaming),
    /// See [`WeightConverter`].
    Converter(WeightConverter),
}

impl From<WeightRenaming> for Transform {
    fn from(r: WeightRenaming) -> Self {
        Transform::Renaming(r)
    }
}

impl From<WeightConverter> for Transform {
    fn from(c: WeightConverter) -> Self {
        Transform::Converter(c)
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transform::Renaming(r) => {
                write!(f, "WeightRenaming({:?} -> {:?})", r.pattern, r.replacement)
            }
            Transform::Converter(c) => {
                write!(
                    f,
                    "WeightConverter({:?} -> {:?}, [",
                    c.source_patterns, c.target_patterns
                )?;
                for (i, op) in c.operations.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{op}")?;
                }
                f.write_str("])")
            }
        }
    }
}
