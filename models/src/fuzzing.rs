//! Entry points for fuzzing (the `fuzz/` targets and the bounded pass in `tests/fuzz.rs`): each
//! runs the models' readers over untrusted bytes and must return, never panic or abort,
//! whatever the bytes. Not public API.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};

/// Parses `bytes` as a `config.json`; a config that parses into a small model is built with
/// random weights and run on three tokens.
pub fn config(bytes: &[u8]) {
    let Ok(json) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let Ok(family) = crate::family::family_of(&json, "fuzz/config.json") else {
        return;
    };
    let Ok(config) = (family.parse_config)(&json, "fuzz/config.json") else {
        return;
    };
    if config.parameter_count() > 200_000 || config.num_hidden_layers > 4 {
        return;
    }
    let Ok(model) = AutoModelForCausalLM::from_config(&json, &LoadOptions::default()) else {
        return;
    };
    let vocab = config.vocab_size as u32;
    if let Ok(ids) = Tensor::from_vec(vec![0, 1 % vocab, 2 % vocab], (1, 3), &Device::Cpu) {
        let _ = model.forward(&ids, None);
    }
}

/// A small Llama with random weights (vocabulary 32, two MoE-free layers, 64 positions).
fn model() -> &'static CausalLM {
    static MODEL: OnceLock<CausalLM> = OnceLock::new();
    MODEL.get_or_init(|| {
        let config = serde_json::json!({
            "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 64,
        });
        AutoModelForCausalLM::from_config(&config, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("the fuzzing model does not build: {e}"))
    })
}

/// Parses `bytes` as the safetensors inputs of `patchwork forward` (`input_ids`, and
/// optionally `attention_mask` and `labels`) and runs a small model's forward pass on them.
pub fn forward_inputs(bytes: &[u8]) {
    let Ok(mut tensors) =
        patch_checkpoint::parse_safetensors("fuzz/inputs.safetensors", bytes, &Device::Cpu)
    else {
        return;
    };
    let Some(ids) = tensors.remove("input_ids") else {
        return;
    };
    let options = ForwardOptions {
        labels: tensors.remove("labels"),
        forced_experts: BTreeMap::new(),
        ..ForwardOptions::default()
    };
    let _ = model().forward_with(&ids, tensors.get("attention_mask"), None, &options);
}
