//! The tokenizer a GGUF file describes in its metadata (`tokenizer.ggml.*`), built as the
//! `tokenizers` object transformers builds from the same file: SentencePiece vocabularies
//! (`llama`: byte-fallback BPE with the merges its scores imply, `▁` for spaces) and byte-level
//! BPE ones (`gpt2`: the file's merges, the pre-tokenizer `tokenizer.ggml.pre` names); control
//! tokens special, user-defined ones added; BOS/EOS and the chat template from the metadata.

use std::collections::HashSet;
use std::path::Path;

use patchwork_gguf::GgufFile;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::chat::ChatTemplate;
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// llama.cpp's token types.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The split regexes of the byte-level pre-tokenizers `tokenizer.ggml.pre` names (the ones
/// transformers knows); another name keeps GPT-2's.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split_of(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => {
            Some(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        "gpt-4o" | "llama4" => Some(GPT4O_SPLIT),
        _ => None,
    }
}

/// The metadata of the tokenizer (a view over the file's).
struct Vocab<'a> {
    file: &'a GgufFile,
    tokens: Vec<String>,
    types: Vec<i64>,
}

impl TextTokenizer {
    /// The tokenizer GGUF file `path` describes (see the module docs); an error names a
    /// tokenizer type it does not read (`llama` and `gpt2` are read).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        Self::from_gguf_file(&file)
    }

    /// Like [`TextTokenizer::from_gguf`], from an open file.
    pub fn from_gguf_file(file: &GgufFile) -> Result<Self> {
        let err = |m: String| Error::Tokenizer {
            path: file.path().display().to_string(),
            message: m,
        };
        let model = file
            .string("tokenizer.ggml.model")?
            .ok_or_else(|| err("no tokenizer in its metadata (tokenizer.ggml.model)".into()))?
            .to_string();
        let tokens = strings(file, "tokenizer.ggml.tokens")?
            .ok_or_else(|| err("metadata \"tokenizer.ggml.tokens\" is missing".into()))?;
        let types = match file.array("tokenizer.ggml.token_type")? {
            Some(a) => a
                .iter()
                .map(integer)
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| {
                    err("metadata \"tokenizer.ggml.token_type\" holds a non-integer".into())
                })?,
            None => vec![1; tokens.len()],
        };
        let vocab = Vocab {
            file,
            tokens,
            types,
        };
        let id_of = |key: &str| -> Result<Option<u32>> {
            let Some(id) = file.uint(key)? else {
                return Ok(None);
            };
            if id as usize >= vocab.tokens.len() {
                return Err(err(format!(
                    "{key} = {id} is not below the vocabulary size {}",
                    vocab.tokens.len()
                )));
            }
            Ok(Some(id as u32))
        };
        let bos = id_of("tokenizer.ggml.bos_token_id")?;
        let eos = id_of("tokenizer.ggml.eos_token_id")?;
        let add_bos = match file.boolean("tokenizer.ggml.add_bos_token")? {
            Some(b) => b,
            // Older SentencePiece files have no flag; llama.cpp adds BOS to them.
            None => model == "llama",
        };
        let json = match model.as_str() {
            "llama" => vocab.sentencepiece(bos.filter(|_| add_bos))?,
            "gpt2" => vocab.byte_level(
                file.string("tokenizer.ggml.pre")?.unwrap_or("default"),
                bos.filter(|_| add_bos),
            )?,
            other => {
                return Err(err(format!(
                    "tokenizer type {other:?} (tokenizer.ggml.model) is not read: llama and gpt2 are"
                )));
            }
        };
        let text = json.to_string();
        let tokenizer = Tokenizer::from_bytes(text.as_bytes()).map_err(|e| {
            err(format!(
                "the tokenizer its metadata describes does not build: {e}"
            ))
        })?;
        let token = |id: Option<u32>| id.map(|i| vocab.tokens[i as usize].clone());
        let chat_template = file.string("tokenizer.chat_template")?.map(|t| {
            ChatTemplate::new(
                t.to_string(),
                format!("{} (tokenizer.chat_template)", file.path().display()),
            )
        });
        Ok(TextTokenizer::assemble(
            tokenizer,
            file.path().to_path_buf(),
            token(bos),
            token(eos),
            chat_template,
            Some(text),
        ))
    }
}

impl Vocab<'_> {
    fn err(&self, m: String) -> Error {
        Error::Tokenizer {
            path: self.file.path().display().to_string(),
            message: m,
        }
    }

    /// `{token: id}`; a token listed twice keeps its last id, as a Python dict does.
    fn ids(&self, spell: impl Fn(&str) -> String) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        for (i, t) in self.tokens.iter().enumerate() {
            map.insert(spell(t), json!(i));
        }
        map
    }

    /// Control tokens special, user-defined ones added (not special); `also_special` (a
    /// tokenizer class's own special tokens) special when in the vocabulary.
    fn added(&self, spelled: Option<&HashSet<char>>, also_special: &[&str]) -> Vec<Value> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let entry = |id: usize, content: &str, special: bool| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": special})
        };
        for (id, (t, ty)) in self.tokens.iter().zip(&self.types).enumerate() {
            let special = *ty == CONTROL || also_special.contains(&t.as_str());
            // In a byte-level vocabulary a control token spelled outside the byte alphabet is a
            // llama.cpp mislabel: it is skipped, as transformers skips it.
            let spelled_ok =
                spelled.is_none_or(|alphabet| t.chars().all(|c| alphabet.contains(&c)));
            if special && spelled_ok && seen.insert(id) {
                out.push(entry(id, t, true));
            }
        }
        for (id, (t, ty)) in self.tokens.iter().zip(&self.types).enumerate() {
            if *ty == USER_DEFINED && seen.insert(id) {
                out.push(entry(id, t, false));
            }
        }
        out.sort_by_key(|e| e["id"].as_u64());
        out
    }

    fn post_processor(&self, bos: Option<u32>) -> Value {
        match bos {
            Some(id) => {
                let t = &self.tokens[id as usize];
                json!({"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": t, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {t.clone(): {"id": t, "ids": [id], "tokens": [t]}}})
            }
            None => json!({"type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {}}),
        }
    }

    /// SentencePiece: byte-fallback BPE, merges from the file or implied by the scores.
    fn sentencepiece(&self, bos: Option<u32>) -> Result<Value> {
        let merges = match strings(self.file, "tokenizer.ggml.merges")? {
            Some(m) => split_merges(&m, self)?,
            None => {
                let scores = floats(self.file, "tokenizer.ggml.scores")?.ok_or_else(|| {
                    self.err(
                        "a SentencePiece vocabulary needs tokenizer.ggml.scores or merges".into(),
                    )
                })?;
                if scores.len() != self.tokens.len() {
                    return Err(self.err(format!(
                        "{} scores for {} tokens",
                        scores.len(),
                        self.tokens.len()
                    )));
                }
                merges_from_scores(&self.tokens, &scores)
            }
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null, "padding": null,
            "added_tokens": self.added(None, &["<unk>", "<s>", "</s>"]),
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false},
            "post_processor": self.post_processor(bos),
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": self.ids(str::to_string), "merges": merges},
        }))
    }

    /// Byte-level BPE: tokens spelled in the byte alphabet, the file's merges.
    fn byte_level(&self, pre: &str, bos: Option<u32>) -> Result<Value> {
        let spelling = bytes_to_unicode();
        let alphabet: HashSet<char> = spelling.values().copied().collect();
        let spell = |t: &str| -> String {
            if t.chars().all(|c| alphabet.contains(&c)) {
                t.to_string()
            } else {
                t.bytes().map(|b| spelling[&b]).collect()
            }
        };
        let merges = strings(self.file, "tokenizer.ggml.merges")?.ok_or_else(|| {
            self.err("a byte-level vocabulary needs tokenizer.ggml.merges".into())
        })?;
        let pre_tokenizer = match split_of(pre) {
            Some(split) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
            None => {
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
            }
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null, "padding": null,
            "added_tokens": self.added(Some(&alphabet), &["<|endoftext|>"]),
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": self.post_processor(bos),
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": "", "end_of_word_suffix": "",
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": self.ids(spell), "merges": split_merges(&merges, self)?},
        }))
    }
}

/// `"a b"` merges as pairs; an error names a merge without exactly one space.
fn split_merges(merges: &[String], vocab: &Vocab<'_>) -> Result<Vec<Value>> {
    merges
        .iter()
        .map(|m| {
            let parts: Vec<&str> = m.split(' ').collect();
            match parts.as_slice() {
                [a, b] => Ok(json!([a, b])),
                _ => Err(vocab.err(format!(
                    "merge {m:?} is not two tokens separated by one space"
                ))),
            }
        })
        .collect()
}

mod merges;
mod meta;

use merges::{bytes_to_unicode, merges_from_scores};
use meta::{floats, integer, strings};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_scores_then_piece_lengths() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].map(String::from).into();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5];
        let merges = merges_from_scores(&tokens, &scores);
        // abc (score -0.5): a+bc and ab+c, ordered by piece ids (ab is 3, a is 0), then the
        // two-letter tokens by score, best first; among abc's, longer left piece first.
        assert_eq!(
            merges,
            vec![
                json!(["ab", "c"]),
                json!(["a", "bc"]),
                json!(["a", "b"]),
                json!(["b", "c"])
            ]
        );
    }

    #[test]
    fn gpt2_byte_table_covers_every_byte_once() {
        let t = bytes_to_unicode();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&b' '], '\u{120}');
        assert_eq!(t[&b'a'], 'a');
        let distinct: HashSet<char> = t.values().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
