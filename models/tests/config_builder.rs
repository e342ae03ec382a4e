//! Family configs built by hand (`LlamaConfig::builder()...build()`): the family's defaults
//! for every key not named, the named keys as a `config.json` holding them gives, and the
//! errors a `config.json` gets, word for word (only the source differs).

use patchwork_models::decoder::FamilyConfig;
use patchwork_models::llama::{LlamaConfig, LlamaForCausalLM};
use patchwork_models::qwen2::Qwen2Config;
use patchwork_models::qwen2_moe::Qwen2MoeConfig;
use patchwork_models::qwen3::Qwen3Config;
use patchwork_models::qwen3_moe::Qwen3MoeConfig;
use patchwork_models::{AutoModelForCausalLM, LoadOptions};
use serde_json::json;

/// `C::from_json(keys)`, the config a `config.json` holding only `keys` gives.
fn parsed<C: FamilyConfig>(keys: serde_json::Value) -> C {
    C::from_json(&keys, "config.json").expect("the keys parse")
}

#[test]
fn an_empty_builder_is_the_family_default() {
    assert_eq!(
        LlamaConfig::builder().build().unwrap(),
        LlamaConfig::default()
    );
    assert_eq!(
        Qwen2Config::builder().build().unwrap(),
        Qwen2Config::default()
    );
    assert_eq!(
        Qwen3Config::builder().build().unwrap(),
        Qwen3Config::default()
    );
    assert_eq!(
        Qwen2MoeConfig::builder().build().unwrap(),
        Qwen2MoeConfig::default()
    );
    assert_eq!(
        Qwen3MoeConfig::builder().build().unwrap(),
        Qwen3MoeConfig::default()
    );
}

#[test]
fn named_keys_are_what_a_config_json_with_them_gives_and_the_rest_stays_the_familys() {
    let built = LlamaConfig::builder()
        .hidden_size(64)
        .intermediate_size(176)
        .num_hidden_layers(2)
        .num_attention_heads(4)
        .num_key_value_heads(2)
        .vocab_size(300)
        .rope_theta(500000.0)
        .tie_word_embeddings(true)
        .mlp_bias(true)
        .build()
        .unwrap();
    let json = json!({
        "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
        "rope_theta": 500000.0, "tie_word_embeddings": true, "mlp_bias": true,
    });
    assert_eq!(built, parsed::<LlamaConfig>(json));
    // Llama's own defaults survive a partial config (DecoderKeys alone has none).
    assert_eq!(built.common.bos_token_id, Some(1.into()));
    assert_eq!(built.common.eos_token_id, Some(2.into()));
    assert!(!built.attention_bias);

    let moe = Qwen3MoeConfig::builder()
        .hidden_size(32)
        .num_attention_heads(4)
        .num_key_value_heads(2)
        .head_dim(8)
        .num_hidden_layers(2)
        .num_experts(16)
        .moe_intermediate_size(16)
        .use_sliding_window(true)
        .sliding_window(8)
        .eos_token_id(&[5, 6])
        .build()
        .unwrap();
    let json = json!({
        "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "num_hidden_layers": 2, "num_experts": 16, "moe_intermediate_size": 16,
        "use_sliding_window": true, "sliding_window": 8, "eos_token_id": [5, 6],
    });
    assert_eq!(moe, parsed::<Qwen3MoeConfig>(json));
    // Qwen3-MoE's own expert defaults survive: 8 experts per token, not Qwen2-MoE's 4.
    assert_eq!(moe.moe.num_experts_per_tok, 8);
    assert_eq!(
        moe.moe.num_experts_per_tok,
        Qwen3MoeConfig::default().moe.num_experts_per_tok
    );

    let shared = Qwen2MoeConfig::builder()
        .shared_expert_intermediate_size(0)
        .qkv_bias(false)
        .build()
        .unwrap();
    assert_eq!(
        shared,
        parsed::<Qwen2MoeConfig>(json!({"shared_expert_intermediate_size": 0, "qkv_bias": false}))
    );
}

/// Each builder's error reads as the `config.json` one does, the source name aside.
#[test]
fn a_wrong_key_is_the_error_a_config_json_gets() {
    fn same<C: FamilyConfig>(built: patchwork_models::Result<C>, json: serde_json::Value) {
        let name = std::any::type_name::<C>().rsplit("::").next().unwrap();
        let built = match built {
            Ok(_) => panic!("the builder accepts what config.json gets refused for: {json}"),
            Err(e) => e.to_string(),
        };
        let parsed = C::parse(&json, "config.json").unwrap_err().to_string();
        assert!(built.contains(&format!("{name}::builder()")), "{built}");
        assert_eq!(
            built.replace(&format!("{name}::builder()"), "config.json"),
            parsed
        );
    }
    same(
        LlamaConfig::builder().hidden_size(0).build(),
        json!({"hidden_size": 0}),
    );
    same(
        LlamaConfig::builder()
            .hidden_size(64)
            .num_attention_heads(5)
            .build(),
        json!({"hidden_size": 64, "num_attention_heads": 5}),
    );
    same(
        LlamaConfig::builder()
            .vocab_size(10)
            .bos_token_id(Some(10))
            .build(),
        json!({"vocab_size": 10, "bos_token_id": 10}),
    );
    same(
        LlamaConfig::builder().hidden_act("softplus").build(),
        json!({"hidden_act": "softplus"}),
    );
    same(
        LlamaConfig::builder()
            .rope_scaling(json!({"rope_type": "linear"}))
            .build(),
        json!({"rope_scaling": {"rope_type": "linear"}}),
    );
    same(
        Qwen2MoeConfig::builder()
            .num_experts(2)
            .num_experts_per_tok(3)
            .build(),
        json!({"num_experts": 2, "num_experts_per_tok": 3}),
    );
    same(
        Qwen2Config::builder()
            .num_hidden_layers(2)
            .layer_types(&["full_attention"])
            .build(),
        json!({"num_hidden_layers": 2, "layer_types": ["full_attention"]}),
    );
    same(
        Qwen3Config::builder().rms_norm_eps(-1.0).build(),
        json!({"rms_norm_eps": -1.0}),
    );
}

#[test]
fn a_built_config_builds_a_model_with_the_familys_token_ids() {
    let config = LlamaConfig::builder()
        .hidden_size(32)
        .intermediate_size(64)
        .num_hidden_layers(2)
        .num_attention_heads(4)
        .vocab_size(64)
        .build()
        .unwrap();
    let model = LlamaForCausalLM::from_config(&config, &LoadOptions::default()).unwrap();
    assert_eq!(model.model.layers.len(), 2);
    assert_eq!(model.config().bos_token_id, Some(1));
    assert_eq!(model.config().eos_token_ids, vec![2]);
    // The same model as from the config's JSON through the Auto entry point.
    let auto =
        AutoModelForCausalLM::from_config(&config.to_json(), &LoadOptions::default()).unwrap();
    assert_eq!(auto.config().hidden_size, 32);
    assert_eq!(auto.config().eos_token_ids, vec![2]);
}
