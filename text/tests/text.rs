//! Text in and out against what the Python libraries compute on the same files
//! (`fixtures/llama-tiny/tokenizer_reference.json`, made by `fixtures/oracle/make_tokenizer.py`),
//! streaming that never splits a character, and generation from text.

use std::path::{Path, PathBuf};

use patchwork_models::{AutoModelForCausalLM, GenerationConfig, LoadOptions};
use patchwork_text::{ChatMessage, TextTokenizer, generate_text};
use serde_json::{Value, json};

fn llama_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llama-tiny")
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(llama_tiny().join("tokenizer_reference.json")).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn encoding_and_decoding_match_the_python_tokenizers_library() {
    let tok = TextTokenizer::from_dir(llama_tiny()).unwrap();
    assert_eq!(tok.vocab_size(), 256);
    assert_eq!(
        (tok.bos_token(), tok.eos_token()),
        (Some("<s>"), Some("</s>"))
    );
    assert_eq!(tok.eos_token_id(), Some(2));
    let reference = reference();
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let with = tok.encode(text, true).unwrap();
        assert_eq!(with, ids(&case["ids"]), "{text:?}");
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&case["ids_without_special_tokens"]),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&with, true).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&with, false).unwrap(),
            case["decoded_with_special_tokens"].as_str().unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn the_chat_template_renders_and_encodes_as_transformers_does() {
    let tok = TextTokenizer::from_dir(llama_tiny()).unwrap();
    let chat = &reference()["chat"];
    let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let rendered = tok.apply_chat_template(&messages, true).unwrap();
    assert_eq!(rendered, chat["rendered"].as_str().unwrap());
    assert_eq!(tok.encode_chat(&messages, true).unwrap(), ids(&chat["ids"]));
    let without = tok.apply_chat_template(&messages, false).unwrap();
    assert!(!without.ends_with("assistant:"), "{without}");
}

/// A byte-level tokenizer over the 256 bytes (GPT-2's mapping), no merges: every multi-byte
/// character takes several tokens.
fn byte_level(dir: &Path) {
    let bytes_to_unicode = {
        let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        let mut pairs: Vec<(u32, char)> = bs
            .into_iter()
            .zip(cs.into_iter().map(|c| char::from_u32(c).unwrap()))
            .collect();
        pairs.sort();
        pairs
    };
    let mut vocab = serde_json::Map::new();
    for (b, c) in &bytes_to_unicode {
        vocab.insert(c.to_string(), json!(b));
    }
    vocab.insert("<|end|>".into(), json!(256));
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 256, "content": "<|end|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"eos_token": "<|end|>"}).to_string(),
    )
    .unwrap();
}

#[test]
fn streaming_never_splits_a_character() {
    let dir = tempfile::tempdir().unwrap();
    byte_level(dir.path());
    let tok = TextTokenizer::from_dir(dir.path()).unwrap();
    let text = "naïve café — 漢字 ok 🙂!";
    let ids = tok.encode(text, false).unwrap();
    assert!(
        ids.len() > text.chars().count(),
        "multi-byte characters take several tokens"
    );
    let mut stream = tok.stream();
    let mut pieces = Vec::new();
    for &id in ids.iter().chain(&[256]) {
        if let Some(piece) = stream.step(id).unwrap() {
            assert!(!piece.contains('\u{FFFD}'), "{piece:?} splits a character");
            pieces.push(piece);
        }
    }
    assert_eq!(pieces.concat(), text);
    // Each multi-byte character arrived whole: the 4-byte emoji in one piece.
    assert!(pieces.iter().any(|p| p == "🙂"), "{pieces:?}");
}

#[test]
fn generation_from_text_streams_the_decoded_new_tokens() {
    let model =
        AutoModelForCausalLM::from_pretrained(llama_tiny(), &LoadOptions::default()).unwrap();
    let tok = TextTokenizer::from_dir(llama_tiny()).unwrap();
    let prompt = tok.encode("Once upon a time", true).unwrap();
    let config = GenerationConfig {
        ignore_eos: true,
        ..GenerationConfig::greedy(10)
    };
    let mut streamed = String::new();
    let out = generate_text(&model, &tok, &prompt, &config, |p| streamed.push_str(p)).unwrap();
    let by_ids = model
        .generate(std::slice::from_ref(&prompt), &config)
        .unwrap();
    assert_eq!(out.generation.sequences, by_ids.sequences);
    assert_eq!(out.new_ids, by_ids.new_tokens[0]);
    assert_eq!(streamed, out.text);
    assert_eq!(out.text, tok.decode(&out.new_ids, true).unwrap());
    assert!(!out.text.is_empty());
}

#[test]
fn generation_config_stop_ids_override_the_config() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(llama_tiny().join(f), dir.path().join(f)).unwrap();
    }
    let model = AutoModelForCausalLM::from_pretrained(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(model.eos_token_ids(), vec![2]);
    let free = model
        .generate(&[vec![1, 247, 82]], &GenerationConfig::greedy(8))
        .unwrap();
    let stop = free.new_tokens[0][2];
    std::fs::write(
        dir.path().join("generation_config.json"),
        json!({"bos_token_id": 1, "eos_token_id": [250, stop]}).to_string(),
    )
    .unwrap();
    let model = AutoModelForCausalLM::from_pretrained(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(model.eos_token_ids(), vec![250, stop]);
    let stopped = model
        .generate(&[vec![1, 247, 82]], &GenerationConfig::greedy(8))
        .unwrap();
    let first = free.new_tokens[0].iter().position(|&t| t == stop).unwrap();
    assert_eq!(stopped.new_tokens[0], free.new_tokens[0][..=first].to_vec());
    std::fs::write(
        dir.path().join("generation_config.json"),
        json!({"eos_token_id": 9999}).to_string(),
    )
    .unwrap();
    let e = AutoModelForCausalLM::from_pretrained(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("generation_config.json: key \"eos_token_id\": token id 9999 is not below vocab_size 256"), "{e}");
}

#[test]
fn tokenizer_faults_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(TextTokenizer::try_from_dir(dir.path()).unwrap().is_none());
    let e = TextTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json: no tokenizer in this folder"),
        "{e}"
    );
    std::fs::write(dir.path().join("tokenizer.json"), "{\"version\": 3}").unwrap();
    let e = TextTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json: not a tokenizer"), "{e}");
    std::fs::copy(
        llama_tiny().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        json!({"eos_token": "<nope>"}).to_string(),
    )
    .unwrap();
    let e = TextTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json: special token \"<nope>\" is not in the vocabulary"),
        "{e}"
    );
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        json!({}).to_string(),
    )
    .unwrap();
    let tok = TextTokenizer::from_dir(dir.path()).unwrap();
    let e = tok
        .apply_chat_template(&[ChatMessage::user("hi")], true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("this tokenizer has no chat_template"), "{e}");
}
