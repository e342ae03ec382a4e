//! The transform compiler: a list of [`Transform`]s compiled once (regexes, patterns, chains
//! checked), and who supplied them ([`Owner`]). Loading, scopes and saving all compile here.

use std::fmt;

use crate::convert::CompiledConverter;
use crate::rename::CompiledRenaming;
use crate::{Error, Result, Transform};

/// Who supplied a transform: the registry's mapping for the model, or a replacement module
/// carrying its own at the path it is built at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// The registry's mapping (what the source was made with).
    Registry,
    /// A replacement's transforms, scoped to `prefix`.
    Replacement {
        /// The replacement's type name.
        name: &'static str,
        /// The module path it is built at.
        prefix: String,
    },
}

impl Owner {
    /// `registry`, or the replacement's type name: what reports merge counts by (a replacement
    /// built at every layer is one line).
    pub fn name(&self) -> &'static str {
        match self {
            Owner::Registry => "registry",
            Owner::Replacement { name, .. } => name,
        }
    }

    /// Whether this is the registry.
    pub fn is_registry(&self) -> bool {
        matches!(self, Owner::Registry)
    }
}

/// `registry`, or `Type at "prefix"`.
impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Registry => f.write_str("registry"),
            Owner::Replacement { name, prefix } => write!(f, "{name} at {prefix:?}"),
        }
    }
}

/// One list of transforms, compiled: its renamings and its converters, each in order.
#[derive(Debug, Default)]
pub(crate) struct CompiledTransforms {
    /// The renamings, in order.
    pub renamings: Vec<CompiledRenaming>,
    /// The converters, in order.
    pub converters: Vec<CompiledConverter>,
}

impl CompiledTransforms {
    /// Compiles every transform; the first malformed one is the error.
    pub fn new(transforms: &[Transform]) -> Result<Self> {
        let (compiled, errors) = Self::each(transforms);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(compiled),
        }
    }

    /// Compiles every transform that compiles, and gives the errors of the others in order.
    pub fn each(transforms: &[Transform]) -> (Self, Vec<Error>) {
        let mut compiled = Self::default();
        let mut errors = Vec::new();
        for t in transforms {
            let result = match t {
                Transform::Renaming(r) => {
                    CompiledRenaming::new(r).map(|r| compiled.renamings.push(r))
                }
                Transform::Converter(c) => {
                    CompiledConverter::new(c).map(|c| compiled.converters.push(c))
                }
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        (compiled, errors)
    }

    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.renamings.is_empty() && self.converters.is_empty()
    }
}
