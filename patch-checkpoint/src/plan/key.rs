//! A checkpoint key in the plan: as stored, and the names and unit the plan gave it.

use crate::safetensors_io::TensorMeta;

use super::{RenamingId, UnitId};

/// A key as stored: its name in its file, the file, and its header entry.
#[derive(Clone, Debug)]
pub(crate) struct StoredKey {
    /// As named in its file.
    pub original: String,
    /// Which of the checkpoint's files holds it.
    pub file: usize,
    /// Its header entry.
    pub meta: TensorMeta,
}

/// A renaming that changed a key's name, and how reports describe it.
#[derive(Clone, Debug)]
pub(super) struct Renamed {
    pub renaming: RenamingId,
    pub description: String,
}

/// One checkpoint key and what the plan made of it.
#[derive(Debug)]
pub(crate) struct Key {
    pub(super) stored: StoredKey,
    /// After the registry's renamings.
    pub(super) base: String,
    /// After scoped renamings too: the model's name for it.
    pub(super) name: String,
    /// Renamings that changed it, in order.
    pub(super) renamed_by: Vec<Renamed>,
    /// The unit that claims it, if any.
    pub(super) unit: Option<UnitId>,
    /// Times it was read for a request (directly or through its unit).
    pub(super) consumed: usize,
}

impl Key {
    /// The key as stored.
    pub fn stored(&self) -> &StoredKey {
        &self.stored
    }

    /// As named in its file.
    pub fn original(&self) -> &str {
        &self.stored.original
    }

    /// Its header entry.
    pub fn meta(&self) -> &TensorMeta {
        &self.stored.meta
    }

    /// Its effective name: the name a module asks for it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unit that claims it, if any.
    pub fn unit(&self) -> Option<UnitId> {
        self.unit
    }

    /// Whether a request read it (or meant to, and failed).
    pub fn consumed(&self) -> bool {
        self.consumed > 0
    }
}
