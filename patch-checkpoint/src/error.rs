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
    /// A file or folder could not be read or written; the operating system's error is the
    /// source.
    #[error("{path}: {action}")]
    Io {
        /// The file involved.
        path: String,
        /// What was attempted (`cannot read`, `cannot rename the written file into place`).
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file's contents (or kind) are not what its format requires: a safetensors header, an
    /// index, a JSON file; the message names the tensor, key or byte offset.
    #[error("{path}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong, and where in the file.
        message: String,
    },
    /// Writing refused an output path: a symbolic link, not a regular file, or one of the
    /// inputs.
    #[error("{path}: {message}")]
    Output {
        /// The output path.
        path: String,
        /// Why it is refused.
        message: String,
    },
    /// An allocation would need more memory than the machine can give.
    #[error(
        "{what} needs {} but only {} is available ({limit_source}){hint}",
        crate::memory::human_bytes((*needed).into()),
        crate::memory::human_bytes((*available).into())
    )]
    Memory {
        /// What would be allocated (`the KV cache for 1000000000 positions`).
        what: String,
        /// Bytes it needs (saturating).
        needed: u64,
        /// Bytes available.
        available: u64,
        /// Where the available figure comes from (`MemAvailable + SwapFree`, a cgroup limit).
        limit_source: String,
        /// How to need less, starting with a separator when present.
        hint: String,
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
        "a checkpoint conversion mapping is already registered for {key:?} ({registered_at}); pass overwrite = true to replace it"
    )]
    KeyExists {
        /// The model type or class name.
        key: String,
        /// Where the registered mapping was registered.
        registered_at: String,
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
