//! The one error type of patch-core.

/// What can go wrong registering patches, resolving sites or building modules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A patch key is not a valid regular expression.
    #[error("invalid patch pattern {key:?}: {message}")]
    InvalidPattern {
        /// The key as given.
        key: String,
        /// The regex engine's explanation.
        message: String,
    },
    /// `register_patch_mapping` without `overwrite` met a key that is already registered.
    #[error(
        "patch key {key:?} is already registered (replacement {existing}); pass overwrite = true to replace it"
    )]
    KeyExists {
        /// The key.
        key: String,
        /// The replacement registered under it now.
        existing: String,
    },
    /// One mapping listed the same key twice.
    #[error("patch key {key:?} appears twice in one mapping")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `unregister_patch_mapping` was given a key that is not registered.
    #[error(
        "cannot unregister {key:?}: no patch is registered under this key (registered keys: {known})"
    )]
    UnknownKey {
        /// The key.
        key: String,
        /// The keys that are registered, for the message.
        known: String,
    },
    /// A key that names a site exactly maps it to a replacement that fills another slot.
    #[error(
        "patch key {key:?} names site {site} (slot {site_slot}), but its replacement {replacement} fills slot {replacement_slot}"
    )]
    SlotMismatch {
        /// The key.
        key: String,
        /// The site it names.
        site: String,
        /// The site's slot.
        site_slot: &'static str,
        /// The replacement's type name.
        replacement: String,
        /// The slot the replacement fills.
        replacement_slot: &'static str,
    },
    /// Two link-time patches of equal priority match one site with different replacements.
    #[error(
        "site {site} is matched by two link-time patches of equal priority with different replacements: {first} and {second}; give one a higher `priority` or register the one you want at run time"
    )]
    Ambiguous {
        /// The site.
        site: String,
        /// One patch (key and replacement).
        first: String,
        /// The other.
        second: String,
    },
    /// Building a site failed; `path` is where in the model.
    #[error("building {site} at {path:?}: {source}")]
    Build {
        /// Dotted module path of the site.
        path: String,
        /// The site's name.
        site: &'static str,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
    /// Reading or converting weights failed.
    #[error(transparent)]
    Weights(#[from] patch_checkpoint::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error from user code (a replacement's constructor, say).
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Wraps any error, for replacements whose constructors fail in their own ways.
    pub fn other(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Other(err.into())
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
