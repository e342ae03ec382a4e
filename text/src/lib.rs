#![warn(missing_docs)]
//! Text in and out for patchwork models: the checkpoint folder's `tokenizer.json` through the
//! `tokenizers` crate (Hugging Face's own, so the ids are those of the Python library), the
//! special tokens and chat template of `tokenizer_config.json` rendered with minijinja as
//! transformers renders them, and generation from text with the new text streamed as it comes
//! (incremental decoding that never splits a UTF-8 character).
//!
//! ```no_run
//! use patchwork_models::{AutoModelForCausalLM, GenerationConfig, LoadOptions};
//! use patchwork_text::{TextTokenizer, generate_text};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = AutoModelForCausalLM::from_pretrained("fixtures/llama-tiny", &LoadOptions::default())?;
//! let tokenizer = TextTokenizer::from_dir("fixtures/llama-tiny")?;
//! let out = generate_text(&model, &tokenizer, &tokenizer.encode("Hello", true)?,
//!     &GenerationConfig::greedy(16), |piece| print!("{piece}"))?;
//! println!("\n{} new tokens", out.new_ids.len());
//! # Ok(()) }
//! ```

mod chat;
mod generate;
mod gguf;
mod tokenizer;

pub use chat::ChatMessage;
pub use generate::{TextGeneration, generate_text};
pub use tokenizer::{TextStream, TextTokenizer};

/// What can go wrong turning text into ids and back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tokenizer file is missing, unreadable or malformed.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Encoding or decoding failed.
    #[error("{path}: cannot {what}: {message}")]
    Codec {
        /// The tokenizer file.
        path: String,
        /// `encode "..."`, `decode`.
        what: String,
        /// What the tokenizer said.
        message: String,
    },
    /// The chat template is absent, does not compile or fails to render.
    #[error("{path}: chat template: {message}")]
    ChatTemplate {
        /// Where the template came from.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Reading a file failed.
    #[error(transparent)]
    File(#[from] patch_checkpoint::Error),
    /// Generation failed.
    #[error(transparent)]
    Model(#[from] patchwork_models::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
