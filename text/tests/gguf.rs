//! The tokenizer a GGUF file describes gives transformers' ids on every text of
//! `fixtures/gguf/*.tokenizer_reference.json` (ASCII, non-ASCII, whitespace runs, special
//! tokens in the text), decodes as it does, and renders its chat template.

use std::path::PathBuf;

use patchwork_text::{ChatMessage, TextTokenizer};
use serde_json::Value;

fn gguf_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gguf")
}

fn references() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(gguf_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".tokenizer_reference.json") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((name, serde_json::from_str(&text).unwrap()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gguf_tokenizers_encode_decode_and_chat_as_transformers() {
    let refs = references();
    assert!(refs.len() >= 4, "{refs:?}");
    for (name, r) in refs {
        let file = gguf_dir().join(r["gguf_file"].as_str().unwrap());
        let tok = TextTokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tok.bos_token(), r["bos_token"].as_str(), "{name}");
        assert_eq!(tok.eos_token(), r["eos_token"].as_str(), "{name}");
        for case in r["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text, true).unwrap(),
                ids(&case["ids"]),
                "{name}: {text:?}"
            );
            let plain = ids(&case["ids_without_special_tokens"]);
            assert_eq!(
                tok.encode(text, false).unwrap(),
                plain,
                "{name}: {text:?} without special tokens"
            );
            let all = ids(&case["ids"]);
            assert_eq!(
                tok.decode(&all, true).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{name}: decode {text:?}"
            );
        }
        let chat = &r["chat"];
        let messages: Vec<ChatMessage> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let rendered = tok.apply_chat_template(&messages, true).unwrap();
        assert_eq!(rendered, chat["rendered"].as_str().unwrap(), "{name}: chat");
        assert_eq!(
            tok.encode_chat(&messages, true).unwrap(),
            ids(&chat["ids"]),
            "{name}: chat ids"
        );
    }
}
