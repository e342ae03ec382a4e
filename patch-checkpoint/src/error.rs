//! The error type of checkpoint loading, conversion and saving.

/// What can go wrong while reading, converting or writing weights.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A module asked for a tensor the source cannot provide.
    #[error("missing tensor {name:?} (asked for shape {shape:?}){context}")]
    Missing {
        /// Full dotted name the module asked for.
        name: String,
        /// The shape it asked for.
        shape: Vec<usize>,
        /// Extra context (transform chain, source), starting with a separator when present.
        context: String,
    },
    /// A tensor exists but its shape is not the one the module asked for.
    #[error("tensor {name:?} has shape {found:?}, the module asked for {expected:?}{context}")]
    Shape {
        /// Full dotted name.
        name: String,
        /// Shape the module asked for.
        expected: Vec<usize>,
        /// Shape found in the source.
        found: Vec<usize>,
        /// Extra context, starting with a separator when present.
        context: String,
    },
    /// A transform is malformed (bad pattern, op that does not fit its inputs, ...).
    #[error("invalid transform {transform}: {message}")]
    Transform {
        /// The transform, as written.
        transform: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file involved.
        path: String,
        /// What happened.
        message: String,
    },
    /// Strict accounting failed: everything wrong with one load, listed together.
    #[error(
        "{source_name}: {}",
        crate::accounting::format_problems(problems, crate::accounting::SHOWN_PROBLEMS)
    )]
    Accounting {
        /// What was loaded (`checkpoint path/to/dir`).
        source_name: String,
        /// Every problem, sorted by kind then name.
        problems: Vec<crate::Problem>,
    },
    /// `register_checkpoint_conversion_mapping` without `overwrite` met a registered key.
    #[error(
        "a checkpoint conversion mapping is already registered for {key:?} ({origin}); pass overwrite = true to replace it"
    )]
    KeyExists {
        /// The model type or class name.
        key: String,
        /// Where the registered mapping came from.
        origin: String,
    },
    /// `unregister_checkpoint_conversion_mapping` was given a key that is not registered.
    #[error("no checkpoint conversion mapping is registered for {key:?} (registered: {known})")]
    UnknownKey {
        /// The key.
        key: String,
        /// The registered keys, for the message.
        known: String,
    },
    /// Two link-time defaults for one key disagree.
    #[error(
        "two link-time checkpoint conversion mappings for {key:?} disagree ({first} and {second}); register the one you want at run time with overwrite = true"
    )]
    Ambiguous {
        /// The key.
        key: String,
        /// Where one was submitted.
        first: String,
        /// Where the other was submitted.
        second: String,
    },
    /// Saving cannot lay a tensor out in the checkpoint format.
    #[error("cannot save {name:?}: {message}")]
    Save {
        /// The tensor (model name) or checkpoint key involved.
        name: String,
        /// Why.
        message: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
