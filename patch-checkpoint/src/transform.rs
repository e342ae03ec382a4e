//! Weight transforms: how a checkpoint's tensor layout maps to the layout built modules ask for.
//!
//! The names follow transformers' `conversion_mapping`: [`WeightRenaming`] renames keys,
//! [`WeightConverter`] turns a group of source tensors into a group of target tensors through a
//! chain of [`Op`]s. Every op has a reverse, used when saving.
//!
//! # Key patterns
//!
//! A [`WeightRenaming`] pattern is a regex (regex crate syntax; `$1`/`${name}` in the
//! replacement) matched anywhere in a key and replaced everywhere it matches.
//!
//! A [`WeightConverter`] pattern is a dotted key fragment, written literally (a `.` is a dot),
//! where `*` stands for a module-list index (`\d+`). It matches whole dotted components
//! anywhere in a key (`q_proj` matches `model.layers.0.self_attn.q_proj.weight` but not
//! `lora_q_proj.weight`); a leading `^` or trailing `$` anchors it to the start or end of the
//! key. The text before and after the match (`model.layers.0.self_attn.` and `.weight` above)
//! is carried over to the target names, and the indices a source captured fill the target's
//! `*`s from left to right.
//!
//! # Units and module lists
//!
//! The checkpoint keys a converter matches are grouped into *units*, one per distinct target
//! name set: `q_proj.weight`, `k_proj.weight` and `v_proj.weight` of one layer form the unit
//! that produces that layer's `qkv_proj.weight`. When the sources have one `*` more than the
//! targets, that last `*` indexes a module list: every index found (sorted numerically, and
//! required to be `0..n`) belongs to the same unit, and the chain must stack them
//! ([`Op::MergeModulelist`]). When the targets have one `*` more, the chain must unstack
//! ([`Op::SplitModulelist`]) and the targets are generated for every index.
//!
//! # What each op does
//!
//! An op chain works on an ordered list of *parts*, one per source pattern at the start (each
//! part a tensor, or a list of tensors for a module list), and must end with one part per
//! target pattern. See each [`Op`] variant for what it needs and produces.

use std::fmt;

/// One step of a [`WeightConverter`] chain. Each has a reverse, which saving applies with the
/// sizes recorded at load (a concatenation splits back into its parts as they were).
///
/// Part rules (checked when a transform is registered or a checkpoint source is made):
/// [`Op::Concatenate`] and [`Op::Interleave`] turn all parts (single tensors) into one;
/// [`Op::Chunk`] and [`Op::Deinterleave`] turn one part into one per target pattern;
/// [`Op::MergeModulelist`] stacks every list part into a tensor; [`Op::SplitModulelist`]
/// unstacks every tensor part into a list; [`Op::Transpose`] applies to every tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Concatenate the group's tensors along `dim` (reverse: [`Op::Chunk`]; on save the split
    /// sizes recorded at load are used, so unequal parts such as GQA's q/k/v round-trip; a
    /// model built without a checkpoint splits into equal parts).
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
    /// Interleave the group's tensors (equal shapes) row by row along `dim`: with two inputs
    /// `a` and `b`, the result is `a[0], b[0], a[1], b[1], ...` (reverse: [`Op::Deinterleave`]).
    Interleave {
        /// Dimension to interleave along.
        dim: usize,
    },
    /// Split one tensor into as many tensors as there are targets by taking every n-th row
    /// along `dim` (reverse: [`Op::Interleave`]); for checkpoints that store, say, gate and up
    /// projections interleaved.
    Deinterleave {
        /// Dimension to de-interleave along.
        dim: usize,
    },
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
            Op::Deinterleave { dim } => write!(f, "Deinterleave(dim={dim})"),
        }
    }
}

/// Renames checkpoint keys: every match of `pattern` (a regex) is replaced by `replacement`.
///
/// On save, the renaming is undone. A key loaded from a checkpoint is saved under the exact
/// key it was read from. A tensor with no checkpoint behind it (a model built from its config)
/// gets the reverse renaming, built from the pattern: literals and capture groups, with `^`/`$`
/// anchors kept (an unescaped `.` outside a group reads as a dot); the result is kept only if
/// the forward renaming maps it back to the name, so a name that never needed the renaming is
/// never rewritten (the upstream `encoder.layers` -> `encoder.encoder.layers` bug). A pattern
/// with other syntax outside capture groups cannot be reversed, and saving such a model fails
/// with an error naming the renaming.
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
///
/// Validate one early with [`Transform::validate`]; registering a mapping validates it too.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transform {
    /// See [`WeightRenaming`].
    Renaming(WeightRenaming),
    /// See [`WeightConverter`].
    Converter(WeightConverter),
}

impl Transform {
    /// Checks the transform: the renaming's regex compiles; the converter's patterns parse, and
    /// its op chain fits its source and target patterns (part counts and module lists).
    pub fn validate(&self) -> crate::Result<()> {
        crate::compile::CompiledTransforms::new(std::slice::from_ref(self)).map(|_| ())
    }
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
