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
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
