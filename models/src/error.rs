//! The error type of the models crate.

/// What can go wrong reading a config, building a model, or running it.
///
/// Every variant names what was wrong and where: the config key and its value, the file, the
/// token id and the vocabulary size, the input and its shape.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is missing, has the wrong type, or is out of range.
    #[error("{source_name}: key {key:?}: {message}")]
    Config {
        /// Where the config came from (`.../config.json`, or `config` for one given in memory).
        source_name: String,
        /// The key (a dotted path for nested keys: `rope_scaling.factor`).
        key: String,
        /// What is wrong, with the offending value.
        message: String,
    },
    /// The config's `model_type` names no linked model family.
    #[error(
        "{source_name}: model_type {model_type:?} is not a linked model family (known: {known})"
    )]
    UnknownModelType {
        /// Where the config came from.
        source_name: String,
        /// The `model_type` found.
        model_type: String,
        /// The model types of the linked families.
        known: String,
    },
    /// A token id is not below the vocabulary size.
    #[error(
        "token id {token} at {input}[{row}, {col}] is out of range: the vocabulary has {vocab_size} tokens"
    )]
    TokenOutOfRange {
        /// The input it was found in (`input_ids`, `prompt 1`, ...).
        input: String,
        /// Row (batch index).
        row: usize,
        /// Column (position).
        col: usize,
        /// The id.
        token: i64,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// An input tensor has the wrong shape, dtype or values.
    #[error("input {name}: {message}")]
    Input {
        /// The input's name (`input_ids`, `attention_mask`, ...).
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The KV cache cannot hold the tokens of this forward pass.
    #[error(
        "KV cache full: it holds {capacity} positions, {used} are used and this pass adds {adding}"
    )]
    CacheFull {
        /// Positions the cache was allocated for.
        capacity: usize,
        /// Positions already written.
        used: usize,
        /// Positions this forward pass writes.
        adding: usize,
    },
    /// A pass or a generation would reach more positions than the model allows.
    #[error(
        "{what} reaches {positions} positions, past the {limit} this model allows (max_position_embeddings in its config); LoadOptions::with_max_positions (--max-positions) raises the limit, the rotary embedding then extrapolating"
    )]
    TooLong {
        /// What would (`a pass of 600 tokens after 0 cached positions`).
        what: String,
        /// The positions it would reach.
        positions: String,
        /// The model's limit.
        limit: usize,
    },
    /// A computation produced NaN or infinite values where the result must be finite.
    #[error("{what} are not finite: {diagnosis}")]
    NonFinite {
        /// What (`the logits of generation step 0`).
        what: String,
        /// Where the non-finite values come from, as far as it could be traced.
        diagnosis: String,
    },
    /// A generation setting is out of range.
    #[error("generation setting {name} = {value}: {message}")]
    Generation {
        /// The setting.
        name: &'static str,
        /// Its value, as given.
        value: String,
        /// What is allowed.
        message: String,
    },
    /// Training was asked of a model whose weights are not trainable variables.
    #[error(
        "{what}: this model was loaded for inference; load it with LoadOptions::trainable() to train it"
    )]
    NotTrainable {
        /// What was asked (`vars`, `gradients`).
        what: &'static str,
    },
    /// Building the model failed (a site's constructor, a missing weight, a patch conflict).
    #[error(transparent)]
    Build(#[from] patch_core::Error),
    /// Reading the checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] patch_checkpoint::Error),
    /// A Hub id could not be resolved to a local folder (boxed: it is large, and rare).
    #[error(transparent)]
    Hub(Box<patchwork_hub::Error>),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<patchwork_hub::Error> for Error {
    fn from(e: patchwork_hub::Error) -> Self {
        Self::Hub(Box::new(e))
    }
}

impl Error {
    /// A [`Error::Config`] for `key` of the config read from `source_name`.
    pub fn config(
        source_name: impl Into<String>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            source_name: source_name.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Input`] about input `name`.
    pub fn input(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Input {
            name: name.into(),
            message: message.into(),
        }
    }
}

/// Inside a replacement's `build`, `?` works on the models' errors (`config.moe()?`): they
/// become [`patch_core::Error`]s (a build error stays what it was).
impl From<Error> for patch_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Build(inner) => inner,
            Error::Candle(inner) => patch_core::Error::Candle(inner),
            Error::Checkpoint(inner) => patch_core::Error::Weights(inner),
            other => patch_core::Error::other(other),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
