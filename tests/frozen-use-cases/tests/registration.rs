//! FROZEN (see `src/lib.rs`): the page's registration blocks (quickstart, global registration,
//! pattern matching, unregistering, manual construction, "how do I know my patch works?").
//! Written as a user writes them against patchwork 0.2.0; edited only by applying
//! CHANGELOG.md's migration lines.

mod common;

use std::sync::atomic::Ordering;

use candle_core::{DType, Device};
use frozen_use_cases::{
    CUSTOM_LLAMA_CALLS, CustomAttention, CustomLlamaAttention, ModuleListExperts,
};
use patch_core::checkpoint::{RandomInit, Weights};
use patch_core::{clear_patch_mapping, get_patch_mapping, unregister_patch_mapping};
use patchwork_models::llama::{LlamaAttention, LlamaConfig, LlamaForCausalLM};
use patchwork_models::prelude::*;

use common::*;

/// Quickstart: every `LlamaAttention` of a loaded model is the custom one, which runs.
#[test]
fn quickstart() -> Fallible {
    let _registry = registry();
    let model =
        AutoModelForCausalLM::from_pretrained(fixture("llama-tiny"), &LoadOptions::default())?;
    model.get_submodule_as::<CustomLlamaAttention>("model.layers.0.self_attn")?;
    let before = CUSTOM_LLAMA_CALLS.load(Ordering::Relaxed);
    let logits = model.forward(&tokens(), None)?;
    assert!(CUSTOM_LLAMA_CALLS.load(Ordering::Relaxed) >= before + 2);
    assert!(max_diff(&logits, &original("llama-tiny").forward(&tokens(), None)?) < 1e-5);
    Ok(())
}

/// Global registration: one patch, several at once with `overwrite`, and the error without it.
#[test]
fn global_registration() -> Fallible {
    let _registry = registry();
    register_patch_mapping(
        [("Qwen2MoeExperts", Replacement::of::<ModuleListExperts>())],
        false,
    )?;
    register_patch_mapping(
        [
            ("Qwen2MoeExperts", Replacement::of::<ModuleListExperts>()),
            ("Qwen2MoeAttention", Replacement::of::<CustomAttention>()),
        ],
        true,
    )?;
    let err = register_patch_mapping(
        [("Qwen2MoeAttention", Replacement::of::<CustomAttention>())],
        false,
    )
    .expect_err("already registered");
    assert!(err.to_string().contains("Qwen2MoeAttention"), "{err}");
    let model =
        AutoModelForCausalLM::from_pretrained(fixture("qwen2-moe-tiny"), &LoadOptions::default())?;
    assert!(
        model
            .built_at("model.layers.0.mlp.experts")?
            .built::<ModuleListExperts>()
    );
    assert!(
        model
            .built_at("model.layers.0.self_attn")?
            .built::<CustomAttention>()
    );
    let d = max_diff(
        &model.forward(&tokens(), None)?,
        &original("qwen2-moe-tiny").forward(&tokens(), None)?,
    );
    assert!(d < 1e-4, "{d}");
    Ok(())
}

/// Pattern matching: `.*Attention` patches every family's attention; the exact name wins
/// over it where both apply; `^Llama\d+Attention$` matches no site and `explain` says so.
#[test]
fn pattern_matching() -> Fallible {
    let _registry = registry();
    register_patch_mapping(
        [(".*Attention", Replacement::of::<CustomAttention>())],
        false,
    )?;
    register_patch_mapping(
        [
            (".*MoeExperts$", Replacement::of::<ModuleListExperts>()),
            (r"^Llama\d+Attention$", Replacement::of::<CustomAttention>()),
        ],
        false,
    )?;
    let qwen =
        AutoModelForCausalLM::from_pretrained(fixture("qwen3-moe-tiny"), &LoadOptions::default())?;
    let site = qwen.built_at("model.layers.1.self_attn")?;
    assert!(site.built::<CustomAttention>());
    assert_eq!(site.winner().map(|w| w.key()), Some(".*Attention"));
    assert!(
        qwen.get_submodule("model.layers.1.self_attn.q_norm")
            .is_ok()
    );
    assert!(
        qwen.built_at("model.layers.0.mlp.experts")?
            .built::<ModuleListExperts>()
    );
    let llama =
        AutoModelForCausalLM::from_pretrained(fixture("llama-tiny"), &LoadOptions::default())?;
    let site = llama.built_at("model.layers.0.self_attn")?;
    assert!(site.built::<CustomLlamaAttention>() && !site.built::<CustomAttention>());
    let text = AutoModelForCausalLM::explain("llama")?.to_string();
    assert!(text.contains(r"^Llama\\d+Attention$"), "{text}");
    Ok(())
}

/// Unregistering one key, several, a pattern; clearing; what is registered.
#[test]
fn unregister_clear_and_list() -> Fallible {
    let _registry = registry();
    register_patch_mapping(
        [
            ("Qwen2MoeExperts", Replacement::of::<ModuleListExperts>()),
            ("Qwen2MoeAttention", Replacement::of::<CustomAttention>()),
            (".*Attention", Replacement::of::<CustomAttention>()),
        ],
        false,
    )?;
    assert!(get_patch_mapping().to_string().contains("Qwen2MoeExperts"));
    unregister_patch_mapping(["Qwen2MoeExperts"])?;
    unregister_patch_mapping(["Qwen2MoeAttention", ".*Attention"])?;
    assert!(unregister_patch_mapping(["Qwen2MoeMLP"]).is_err());
    assert!(!get_patch_mapping().contains_key("Qwen2MoeExperts"));
    assert!(get_patch_mapping().contains_key("LlamaAttention"));
    clear_patch_mapping();
    assert!(get_patch_mapping().is_empty());
    Ok(())
}

/// Manual construction: a model built by hand uses the originals unless built while
/// `apply_patches` applies the registered ones; `from_config` always uses them.
#[test]
fn manual_construction() -> Fallible {
    let _registry = registry();
    let config = LlamaConfig::builder()
        .hidden_size(32)
        .intermediate_size(64)
        .num_hidden_layers(2)
        .num_attention_heads(4)
        .vocab_size(64)
        .build()?;
    let by_hand = || {
        let weights = Weights::new(RandomInit::new(0, 0.02), DType::F32, &Device::Cpu);
        LlamaForCausalLM::build(&Builder::new(weights), &config)
    };
    let patched = {
        let _patches = apply_patches();
        by_hand()?
    };
    assert!(
        patched
            .built_at("model.layers.0.self_attn")?
            .built::<CustomLlamaAttention>()
    );
    let plain = by_hand()?;
    assert!(
        plain
            .get_submodule_as::<LlamaAttention>("model.layers.0.self_attn")
            .is_ok()
    );
    let from_config = LlamaForCausalLM::from_config(&config, &LoadOptions::default())?;
    assert!(
        from_config
            .built_at("model.layers.1.self_attn")?
            .built::<CustomLlamaAttention>()
    );
    assert_eq!(from_config.config().bos_token_id, Some(1));
    Ok(())
}

/// "How do I know my patch works?": the type at a path, and every attention module by name.
#[test]
fn how_do_i_know_my_patch_works() -> Fallible {
    let _registry = registry();
    let model =
        AutoModelForCausalLM::from_pretrained(fixture("llama-tiny"), &LoadOptions::default())?;
    let attn = model.get_submodule("model.layers.0.self_attn")?;
    assert!(attn.type_name().ends_with("CustomLlamaAttention"));
    let attention: Vec<String> = model
        .named_modules()
        .into_iter()
        .filter(|(name, _)| name.ends_with("self_attn"))
        .map(|(name, module)| format!("{name}: {}", module.type_name()))
        .collect();
    assert_eq!(attention.len(), 2);
    assert!(
        attention
            .iter()
            .all(|l| l.ends_with("CustomLlamaAttention")),
        "{attention:?}"
    );
    let explained = model.explain().to_string();
    assert!(explained.contains("CustomLlamaAttention"), "{explained}");
    Ok(())
}
