//! A checkpoint folder's tokenizer: `tokenizer.json`, and the special tokens and chat template
//! of `tokenizer_config.json`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::{DecodeStream, Tokenizer};

use crate::chat::{ChatMessage, ChatTemplate};
use crate::{Error, Result};

/// The largest `tokenizer.json` read (1 GiB; large vocabularies take tens of MB).
const MAX_TOKENIZER_BYTES: u64 = 1 << 30;

/// A checkpoint folder's tokenizer (see the crate docs).
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat_template: Option<ChatTemplate>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// A special token of `tokenizer_config.json`: a string, or an added-token object with
/// `content`.
fn special_token(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

impl TextTokenizer {
    /// The tokenizer of checkpoint folder `dir`: `tokenizer.json` (required), and
    /// `tokenizer_config.json` and `chat_template.jinja` when present.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::try_from_dir(dir.as_ref())?.ok_or_else(|| Error::Tokenizer {
            path: dir.as_ref().join("tokenizer.json").display().to_string(),
            message: "no tokenizer in this folder (give token ids instead)".into(),
        })
    }

    /// Like [`TextTokenizer::from_dir`], `None` when the folder has no `tokenizer.json`.
    pub fn try_from_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Ok(None);
        }
        let bytes = patch_checkpoint::files::read_bounded(&path, MAX_TOKENIZER_BYTES)?;
        let tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| Error::Tokenizer {
            path: path.display().to_string(),
            message: format!("not a tokenizer: {e}"),
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() {
            patch_checkpoint::files::read_json(&config_path)?
        } else {
            Value::Null
        };
        let template_file = dir.join("chat_template.jinja");
        let chat_template = if template_file.exists() {
            let bytes = patch_checkpoint::files::read_bounded(&template_file, 1 << 24)?;
            let source = String::from_utf8(bytes).map_err(|_| Error::ChatTemplate {
                path: template_file.display().to_string(),
                message: "not UTF-8".into(),
            })?;
            Some(ChatTemplate::new(
                source,
                template_file.display().to_string(),
            ))
        } else {
            ChatTemplate::from_config(&config, &config_path)?
        };
        let tokenizer = Self {
            tokenizer,
            path,
            bos_token: special_token(&config, "bos_token"),
            eos_token: special_token(&config, "eos_token"),
            chat_template,
        };
        for token in [&tokenizer.bos_token, &tokenizer.eos_token]
            .into_iter()
            .flatten()
        {
            if tokenizer.tokenizer.token_to_id(token).is_none() {
                return Err(Error::Tokenizer {
                    path: config_path.display().to_string(),
                    message: format!(
                        "special token {token:?} is not in the vocabulary of tokenizer.json"
                    ),
                });
            }
        }
        Ok(Some(tokenizer))
    }

    /// A tokenizer from its parts (what the readers of each kind of file assemble).
    pub(crate) fn assemble(
        tokenizer: Tokenizer,
        path: PathBuf,
        bos_token: Option<String>,
        eos_token: Option<String>,
        chat_template: Option<ChatTemplate>,
        _json: Option<String>,
    ) -> Self {
        Self {
            tokenizer,
            path,
            bos_token,
            eos_token,
            chat_template,
        }
    }

    /// The tokenizer of a model a CLI command or a user names: a GGUF file's (its metadata),
    /// else the folder's `tokenizer.json`; `None` when there is none.
    pub fn for_model(path: &Path) -> Result<Option<Self>> {
        if path.is_file() {
            return Self::from_gguf(path).map(Some);
        }
        Self::try_from_dir(path)
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (the special tokens and the chat
    /// template) into `dir`, as transformers reads them.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |path: &Path, e: std::io::Error| Error::Tokenizer {
            path: path.display().to_string(),
            message: format!("cannot write: {e}"),
        };
        let json = self
            .tokenizer
            .to_string(true)
            .map_err(|e| Error::Tokenizer {
                path: self.path.display().to_string(),
                message: format!("cannot serialize: {e}"),
            })?;
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json).map_err(|e| io(&path, e))?;
        let mut config = serde_json::Map::new();
        if let Some(t) = &self.bos_token {
            config.insert("bos_token".into(), Value::String(t.clone()));
        }
        if let Some(t) = &self.eos_token {
            config.insert("eos_token".into(), Value::String(t.clone()));
        }
        if let Some(t) = &self.chat_template {
            config.insert(
                "chat_template".into(),
                Value::String(t.source().to_string()),
            );
        }
        config.insert(
            "tokenizer_class".into(),
            Value::String("PreTrainedTokenizerFast".into()),
        );
        let path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&Value::Object(config)).unwrap_or_default();
        std::fs::write(&path, text).map_err(|e| io(&path, e))
    }

    /// The `tokenizers` tokenizer itself.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Entries of the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// `tokenizer_config.json`'s `bos_token`.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// `tokenizer_config.json`'s `eos_token`.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The id of `eos_token`, if there is one: generation stops there when the model's
    /// generation config names no stop id.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token
            .as_deref()
            .and_then(|t| self.tokenizer.token_to_id(t))
    }

    fn codec_error(&self, what: String, e: impl std::fmt::Display) -> Error {
        Error::Codec {
            path: self.path.display().to_string(),
            what,
            message: e.to_string(),
        }
    }

    /// The ids of `text`; with `add_special_tokens`, as the post-processor of `tokenizer.json`
    /// adds them (a BOS for Llama-style tokenizers), exactly as the Python library does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| self.codec_error(format!("encode {:?}", shorten(text)), e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.codec_error("decode".into(), e))
    }

    /// An incremental decoder: feed it ids one at a time, it returns the text they add once
    /// that text is whole (never half a UTF-8 character); special tokens are left out.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            tokenizer: self,
            inner: self.tokenizer.decode_stream(true),
        }
    }

    /// The chat template rendered for `messages` (transformers' `apply_chat_template(...,
    /// tokenize=False)`): `bos_token` and `eos_token` in scope, `add_generation_prompt`
    /// appending the assistant's turn opener.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| Error::ChatTemplate {
                path: self
                    .path
                    .with_file_name("tokenizer_config.json")
                    .display()
                    .to_string(),
                message: "this tokenizer has no chat_template".into(),
            })?;
        template.render(
            messages,
            add_generation_prompt,
            self.bos_token.as_deref().unwrap_or(""),
            self.eos_token.as_deref().unwrap_or(""),
        )
    }

    /// The ids of a chat: the rendered template encoded without adding special tokens (the
    /// template writes them), as transformers' `apply_chat_template(..., tokenize=True)`.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        self.encode(
            &self.apply_chat_template(messages, add_generation_prompt)?,
            false,
        )
    }
}

/// `text` cut to 40 characters, for messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// An incremental decoder of one sequence ([`TextTokenizer::stream`]).
pub struct TextStream<'a> {
    tokenizer: &'a TextTokenizer,
    inner: DecodeStream<
        'a,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
}

impl TextStream<'_> {
    /// The text `id` completes, if any (`None` while a character is still incomplete, or for a
    /// special token).
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.inner
            .step(id)
            .map_err(|e| self.tokenizer.codec_error(format!("decode token {id}"), e))
    }
}
