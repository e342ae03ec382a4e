//! Names from before 0.2.0, kept for one release so code written against them still compiles
//! (with a warning naming the replacement); each goes away in 0.3.0. CHANGELOG.md lists them
//! with their migration.

use crate::{ConversionRegistry, RegisteredAt};

/// Formerly where a conversion mapping was registered ([`Origin`](crate::Origin) now only
/// means a tensor's provenance).
#[deprecated(since = "0.2.0", note = "renamed `RegisteredAt`")]
pub type MappingOrigin = RegisteredAt;

impl ConversionRegistry {
    /// Formerly where the mapping under `key` came from.
    #[deprecated(since = "0.2.0", note = "renamed `ConversionRegistry::registered_at`")]
    pub fn origin(&self, key: &str) -> Option<RegisteredAt> {
        self.registered_at(key)
    }
}
