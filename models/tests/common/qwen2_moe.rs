//! Small seeded Qwen2-MoE models as the Qwen2-MoE tests build them.

use candle_core::{Device, Tensor};
use patch_core::PatchSet;
use patchwork_models::qwen2_moe::Qwen2MoeConfig;
use patchwork_models::{AutoModelForCausalLM, CausalLM, LoadOptions};

/// A 3-layer config (layer 1 dense) with `edit` applied.
pub fn small(edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut c = serde_json::json!({
        "model_type": "qwen2_moe", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24, "num_experts": 6,
        "num_experts_per_tok": 2, "mlp_only_layers": [1], "decoder_sparse_step": 1,
        "initializer_range": 0.2, "rope_theta": 10000.0, "eos_token_id": 2,
    });
    edit(&mut c);
    c
}

pub fn model(config: &serde_json::Value, patches: PatchSet) -> CausalLM {
    AutoModelForCausalLM::from_config(
        config,
        &LoadOptions::default().with_seed(5).with_patches(patches),
    )
    .unwrap()
}

pub fn tokens(n: usize) -> Tensor {
    let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % 64).collect();
    Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap()
}

pub fn decoder_config(
    config: &serde_json::Value,
) -> Result<patchwork_models::decoder::DecoderConfig, String> {
    let typed = Qwen2MoeConfig::from_json(config, "config.json").map_err(|e| e.to_string())?;
    typed
        .decoder_config(std::sync::Arc::new(config.clone()), "config.json")
        .map_err(|e| e.to_string())
}
