//! Provenance: where a tensor handed to a model came from, recorded at load so that saving
//! reproduces the checkpoint exactly.

use std::fmt;
use std::sync::Arc;

use candle_core::DType;

use crate::convert::UnitShapes;
use crate::ops::Part;

/// Where a tensor a source served came from: a checkpoint key read as is, one output of a
/// conversion unit, or a placeholder for a request that failed (which saving refuses). [`crate::save_pretrained`] undoes it exactly: original key names, dtypes,
/// and the concatenation sizes seen at load.
#[derive(Clone, Debug)]
pub struct Origin(pub(crate) OriginKind);

#[derive(Clone, Debug)]
pub(crate) enum OriginKind {
    /// Read from `key` (its name in the checkpoint file), stored there as `dtype`.
    Key { key: String, dtype: DType },
    /// Output `index` of a conversion unit.
    Unit { unit: Arc<UnitOrigin>, index: usize },
    /// A placeholder handed out for a failed request (the problem, as reported).
    Placeholder { problem: String },
}

/// What a conversion unit read and how it converted it.
#[derive(Debug)]
pub(crate) struct UnitOrigin {
    /// `WeightConverter(...)` and who supplied it.
    pub description: String,
    /// The checkpoint keys read (as named in the file) and their file dtypes, per source part.
    pub sources: Vec<Part<(String, DType)>>,
    /// The shapes of every stage and the steps between them.
    pub shapes: UnitShapes,
    /// The names of the tensors produced, flattened in output order.
    pub targets: Vec<String>,
}

impl Origin {
    /// The checkpoint keys this tensor was made from (file names, before any renaming).
    pub fn checkpoint_keys(&self) -> Vec<&str> {
        match &self.0 {
            OriginKind::Key { key, .. } => vec![key.as_str()],
            OriginKind::Placeholder { .. } => Vec::new(),
            OriginKind::Unit { unit, .. } => unit
                .sources
                .iter()
                .flat_map(|s| s.items().into_iter().map(|(k, _)| k.as_str()))
                .collect(),
        }
    }

    /// The converter that produced it, if any (`WeightConverter(...)` and who supplied it).
    pub fn converter(&self) -> Option<&str> {
        match &self.0 {
            OriginKind::Key { .. } | OriginKind::Placeholder { .. } => None,
            OriginKind::Unit { unit, .. } => Some(&unit.description),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            OriginKind::Key { key, dtype } => write!(f, "checkpoint key {key:?} ({dtype:?})"),
            OriginKind::Placeholder { problem } => write!(f, "a placeholder ({problem})"),
            OriginKind::Unit { unit, index } => {
                let keys = self.checkpoint_keys();
                write!(
                    f,
                    "output {} of {} {} from {} checkpoint keys",
                    index + 1,
                    unit.targets.len(),
                    unit.description,
                    keys.len()
                )
            }
        }
    }
}
