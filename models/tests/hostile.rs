//! Hostile input through the library API (the CLI's suite is `cli/tests/hostile.rs`): sizes,
//! lengths and settings that must end in a `Result` error naming the value, or in correct
//! output, never in an abort.

mod common;

use candle_core::{DType, Device, Tensor};
use patchwork_models::decoder::KvCache;
use patchwork_models::{AutoModelForCausalLM, Error, GenerationConfig, LoadOptions, Sampling};
use serde_json::json;

fn tiny() -> serde_json::Value {
    json!({
        "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 16,
    })
}

#[test]
fn random_weights_that_cannot_fit_are_an_error_naming_their_size() {
    let mut config = tiny();
    config["hidden_size"] = json!(1 << 20);
    config["intermediate_size"] = json!(1 << 20);
    config["num_hidden_layers"] = json!(4096);
    config["num_attention_heads"] = json!(1024);
    config["num_key_value_heads"] = json!(1024);
    let e = AutoModelForCausalLM::from_config(&config, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("random weights for 31525206049685504 parameters in F32 needs"),
        "{e}"
    );
    assert!(e.contains("check the sizes in the config"), "{e}");
}

#[test]
fn positions_are_bounded_unless_raised() {
    let mut model = AutoModelForCausalLM::from_config(&tiny(), &LoadOptions::default()).unwrap();
    let ids = Tensor::from_vec(
        (0..20u32).map(|i| i % 32).collect::<Vec<_>>(),
        (1, 20),
        &Device::Cpu,
    )
    .unwrap();
    let e = model.forward(&ids, None).unwrap_err();
    assert!(matches!(e, Error::TooLong { limit: 16, .. }), "{e}");
    assert!(
        e.to_string().starts_with(
            "a pass of 20 tokens after 0 cached positions reaches 20 positions, past the 16"
        ),
        "{e}"
    );
    let e = model
        .generate(&[vec![1, 2, 3]], &GenerationConfig::greedy(14))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a prompt of 3 tokens and max_new_tokens = 14 reaches 17 positions"),
        "{e}"
    );
    let e = model.new_cache(1, usize::MAX).unwrap_err().to_string();
    assert!(
        e.contains(&format!("a KV cache of {} positions", usize::MAX)),
        "{e}"
    );
    let e = model.set_max_positions(0).err().unwrap().to_string();
    assert!(e.contains("max_positions: 0 is not in 1..="), "{e}");
    model.set_max_positions(20).unwrap();
    assert_eq!(model.forward(&ids, None).unwrap().dims(), &[1, 20, 32]);
    let raised =
        AutoModelForCausalLM::from_config(&tiny(), &LoadOptions::default().with_max_positions(20))
            .unwrap();
    assert_eq!(raised.max_positions(), 20);
    // A cache of the limit's size takes the whole sequence; one more position is an error.
    let mut cache = model.new_cache(1, 20).unwrap();
    model
        .forward_with(&ids, None, Some(&mut cache), &Default::default())
        .unwrap();
    let one = Tensor::from_vec(vec![1u32], (1, 1), &Device::Cpu).unwrap();
    let e = model
        .forward_with(&one, None, Some(&mut cache), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("a pass of 1 tokens after 20 cached positions reaches 21 positions"),
        "{e}"
    );
}

#[test]
fn cache_sizes_never_overflow() {
    let e = KvCache::new(2, usize::MAX, 2).unwrap_err().to_string();
    assert!(
        e.contains(&format!("{} rows x 2 positions overflow", usize::MAX)),
        "{e}"
    );
}

#[test]
fn a_vanishing_temperature_decodes_greedily_and_huge_ones_stay_finite() {
    let model =
        AutoModelForCausalLM::from_config(&tiny(), &LoadOptions::default().with_seed(3)).unwrap();
    let greedy = model
        .generate(&[vec![1, 2, 3]], &GenerationConfig::greedy(8))
        .unwrap();
    for temperature in [1e-300, f64::MIN_POSITIVE, 1e-30] {
        let config = GenerationConfig {
            sampling: Sampling::Sample {
                temperature,
                top_k: None,
                top_p: None,
                seed: 1,
            },
            ..GenerationConfig::greedy(8)
        };
        let out = model.generate(&[vec![1, 2, 3]], &config).unwrap();
        assert_eq!(out.sequences, greedy.sequences, "temperature {temperature}");
    }
    let config = GenerationConfig {
        sampling: Sampling::Sample {
            temperature: 1e300,
            top_k: Some(5),
            top_p: Some(0.5),
            seed: 1,
        },
        ..GenerationConfig::greedy(8)
    };
    let out = model.generate(&[vec![1, 2, 3]], &config).unwrap();
    assert!(out.new_tokens[0].iter().all(|&t| t < 32));
}

#[test]
fn parameter_counts_from_configs_match_the_built_models() {
    for fixture in common::fixtures() {
        let model =
            AutoModelForCausalLM::from_pretrained(&fixture.dir, &LoadOptions::default()).unwrap();
        assert_eq!(
            model.config().parameter_count(),
            model.num_parameters() as u128,
            "{}",
            fixture.name
        );
    }
    let model = AutoModelForCausalLM::from_config(&tiny(), &LoadOptions::default()).unwrap();
    assert_eq!(
        model.config().parameter_count(),
        model.num_parameters() as u128
    );
}

#[test]
fn masks_that_do_not_fit_the_pass_are_errors() {
    use patchwork_models::ops::{AttentionMask, KeyValues, attention};
    let dev = Device::Cpu;
    let q = Tensor::zeros((1, 3, 2, 4), DType::F32, &dev).unwrap();
    let k = Tensor::zeros((1, 1, 3, 4), DType::F32, &dev).unwrap();
    let kv = KeyValues {
        keys: &k,
        values: &k,
        len: 3,
    };
    let mask = AttentionMask::causal(1, 2, DType::F32, &dev).unwrap();
    let e = attention(&q, &kv, Some(&mask), 0.5, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the mask is for 1 rows of 2 queries over 2 keys"),
        "{e}"
    );
    let e = AttentionMask::new(1, 0, 2, Some(0), vec![1, 1], DType::F32, &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("a sliding window of 0 positions"), "{e}");
    let e = AttentionMask::new(1, usize::MAX, 2, None, vec![1, 1], DType::F32, &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("too many positions"), "{e}");
}
