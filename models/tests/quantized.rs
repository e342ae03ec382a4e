//! Quantized replacements: every attention, MLP and routed-experts site and the output head
//! quantized at load
//! (`LoadOptions::with_quantization`), logits close to the float model's, the replacements
//! visible in `explain`, and clear errors where a format cannot apply.

use candle_core::{Device, Tensor};
use patch_core::{ModuleExt, PatchSet, Replacement};
use patchwork_models::replacements::{
    Q4K, Q8_0, QuantFormat, QuantizedAttention, QuantizedExperts, QuantizedMlp,
};
use patchwork_models::{
    AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions, Quantization, routing,
};
use patchwork_testing::{Tolerance, assert_close};

mod common;

fn ids(vocab: usize) -> Tensor {
    let ids: Vec<u32> = (0..24).map(|i| ((i * 37 + 5) % vocab) as u32).collect();
    Tensor::from_vec(ids, (2, 12), &Device::Cpu).unwrap()
}

/// The float model's logits and, for an MoE model, its routing; then the quantized model's
/// logits under that routing replayed (a quantized attention output that flips one token's
/// top-k choice would otherwise dominate the comparison), checked within `bound` of
/// max |float logits| (every logit finite). Returns `max |q - f| / max |f|`.
fn compare(float: &CausalLM, quantized: &CausalLM, vocab: usize, bound: f32, what: &str) -> f32 {
    let options = ForwardOptions {
        output_router_logits: Some(true),
        ..ForwardOptions::default()
    };
    let f = float
        .forward_with(&ids(vocab), None, None, &options)
        .unwrap();
    let replay = ForwardOptions {
        forced_experts: routing::recorded_experts(&f.router_logits),
        ..ForwardOptions::default()
    };
    let q = quantized
        .forward_with(&ids(vocab), None, None, &replay)
        .unwrap();
    let report = assert_close(
        q.logits.as_ref().unwrap(),
        f.logits.as_ref().unwrap(),
        Tolerance::of_max(bound),
        what,
    );
    report.max_abs_diff / report.scale
}

/// Every attention, MLP and routed-experts module of `model` is the quantized replacement of
/// format `Q`; returns how many experts modules there are.
fn assert_quantized<Q: QuantFormat>(model: &CausalLM, what: &str) -> usize {
    let modules = model.named_modules();
    let attention: Vec<_> = modules
        .iter()
        .filter(|(p, _)| p.ends_with("self_attn"))
        .collect();
    assert!(!attention.is_empty(), "{what}: no attention");
    for (path, module) in &attention {
        assert!(
            module.is::<QuantizedAttention<Q>>(),
            "{what}: {path} is {}",
            module.type_name()
        );
    }
    for (path, module) in modules
        .iter()
        .filter(|(p, _)| p.ends_with(".mlp") || p.ends_with("shared_expert"))
    {
        if module.type_name().contains("MLP") || module.type_name().contains("Mlp") {
            assert!(
                module.is::<QuantizedMlp<Q>>(),
                "{what}: {path} is {}",
                module.type_name()
            );
        }
    }
    let experts: Vec<_> = modules
        .iter()
        .filter(|(p, _)| p.ends_with(".experts"))
        .collect();
    for (path, module) in &experts {
        assert!(
            module.is::<QuantizedExperts<Q>>(),
            "{what}: {path} is {}",
            module.type_name()
        );
    }
    experts.len()
}

#[test]
fn q8_0_models_stay_close_to_the_float_ones_on_every_fixture() {
    for f in common::fixtures() {
        let vocab = f.config["vocab_size"].as_u64().unwrap() as usize;
        let float = AutoModelForCausalLM::from_pretrained(&f.dir, &LoadOptions::default()).unwrap();
        let options = LoadOptions::default().with_quantization(Quantization::Q8_0);
        let quantized = AutoModelForCausalLM::from_pretrained(&f.dir, &options).unwrap();
        let experts = assert_quantized::<Q8_0>(&quantized, &f.name);
        assert_eq!(experts > 0, f.name.contains("moe"), "{}", f.name);
        assert_eq!(quantized.lm_head.quantization(), Some(Quantization::Q8_0));
        let explain = quantized.explain().to_string();
        assert!(
            explain.contains("QuantizedAttention"),
            "{}: {explain}",
            f.name
        );
        // What these random 64-wide models measure (2.1-3.4% with the weights dequantized,
        // candle's activation quantization adds up to 0.7 points); the 2% is for
        // trained checkpoints and is not met here (see PERFORMANCE.md). A bound that catches
        // a wrong block or scale, which moves logits by tens of percent.
        let r = compare(&float, &quantized, vocab, 0.05, &format!("{} q8_0", f.name));
        eprintln!(
            "{}: q8_0 logits within {:.2}% of max |f32 logits|",
            f.name,
            r * 100.0
        );
        assert!(r > 0.0, "{}: the weights were not quantized", f.name);
    }
}

#[test]
fn q4k_models_stay_close_to_the_float_ones() {
    // The fixtures are 64 wide, below Q4_K's 256-weight blocks: models of their own, seeded.
    for model_type in ["llama", "qwen3", "qwen3_moe"] {
        let config = serde_json::json!({
            "model_type": model_type,
            "hidden_size": 256,
            "intermediate_size": 512,
            "moe_intermediate_size": 256,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "vocab_size": 512,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": false,
        });
        let float = AutoModelForCausalLM::from_config(&config, &LoadOptions::default()).unwrap();
        let options = LoadOptions::default().with_quantization(Quantization::Q4K);
        let quantized = AutoModelForCausalLM::from_config(&config, &options).unwrap();
        let experts = assert_quantized::<Q4K>(&quantized, model_type);
        assert_eq!(experts > 0, model_type.contains("moe"), "{model_type}");
        // Random Gaussian weights at 4.5 bits measure 13-16% here (the 8% is not
        // met on them); a wrong super-block scale or offset gives well over 50%.
        let r = compare(&float, &quantized, 512, 0.25, &format!("{model_type} q4k"));
        eprintln!(
            "{model_type}: q4k logits within {:.2}% of max |f32 logits|",
            r * 100.0
        );
        assert!(r > 0.0, "{model_type}: the weights were not quantized");
    }
}

#[test]
fn formats_that_cannot_apply_are_errors_naming_the_layer() {
    let dir = common::fixtures_dir().join("llama-tiny");
    let options = LoadOptions::default().with_quantization(Quantization::Q4K);
    let e = AutoModelForCausalLM::from_pretrained(&dir, &options)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("q4k quantizes rows in blocks of 256"), "{e}");
    assert!(e.contains("model.layers.0.self_attn"), "{e}");
    assert!(e.contains("has 64 inputs"), "{e}");
    let trainable = LoadOptions::default()
        .with_quantization(Quantization::Q8_0)
        .trainable();
    let e = AutoModelForCausalLM::from_pretrained(&dir, &trainable)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("quantized weights are for inference"), "{e}");
    // A key the quantized patches use is already taken by the user's patches.
    let taken = PatchSet::from_mapping([(
        ".*Attention",
        Replacement::of::<patchwork_models::replacements::FusedQkvAttention>(),
    )])
    .unwrap();
    let options = LoadOptions::default()
        .with_patches(taken)
        .with_quantization(Quantization::Q8_0);
    let e = AutoModelForCausalLM::from_pretrained(&dir, &options)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("already hold a key"), "{e}");
}
