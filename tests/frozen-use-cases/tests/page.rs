//! FROZEN (see `src/lib.rs`): each code block of the upstream page, as a user writes it
//! against patchwork 0.2.0. Edited only by applying CHANGELOG.md's migration lines.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};

use candle_core::{DType, Device, Tensor};
use frozen_use_cases::{
    CUSTOM_CALLS, CUSTOM_LLAMA_CALLS, CustomAttention, CustomLlamaAttention, FusedQkvAttention,
    ModuleListExperts, MovedRouter,
};
use patch_core::checkpoint::{
    RandomInit, Weights, get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping,
};
use patch_core::{
    clear_patch_mapping, get_patch_mapping, reset_patch_mapping, unregister_patch_mapping,
};
use patchwork_models::llama::{LlamaAttention, LlamaConfig, LlamaForCausalLM};
use patchwork_models::prelude::*;
use patchwork_models::routing::{experts_from_records, experts_from_vllm, recorded_experts};

type Fallible = std::result::Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn tokens() -> Tensor {
    Tensor::new(&[[66u32, 221, 47, 234, 117, 102, 13, 226]], &Device::Cpu).expect("ids")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all());
    d.and_then(|d| d.to_scalar::<f32>()).expect("a difference")
}

/// The global registry is the page's subject: one block at a time, each starting from the
/// link-time patches (this crate's `CustomLlamaAttention`).
fn registry() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    reset_patch_mapping();
    guard
}

fn original(name: &str) -> CausalLM {
    let options = LoadOptions::default().with_patches(PatchSet::empty());
    AutoModelForCausalLM::from_pretrained(fixture(name), &options).expect("the fixture loads")
}

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

/// Weight size mismatch: a fused q/k/v attention loads once a conversion mapping concatenates
/// the checkpoint's q/k/v, and computes what the original does.
#[test]
fn weight_size_mismatch() -> Fallible {
    let _registry = registry();
    let patches =
        PatchSet::from_mapping([("LlamaAttention", Replacement::of::<FusedQkvAttention>())])?;
    let options = LoadOptions::default().with_patches(patches);
    let Err(err) = AutoModelForCausalLM::from_pretrained(fixture("llama-tiny"), &options) else {
        panic!("qkv_proj is in no checkpoint: the load must fail");
    };
    assert!(err.to_string().contains("qkv_proj"), "{err}");
    let saved = get_checkpoint_conversion_mapping("llama")?;
    register_checkpoint_conversion_mapping(
        "llama",
        vec![
            WeightConverter::new(
                ["q_proj", "k_proj", "v_proj"],
                ["qkv_proj"],
                [Op::Concatenate { dim: 0 }],
            )
            .into(),
        ],
        true,
    )?;
    let model = AutoModelForCausalLM::from_pretrained(fixture("llama-tiny"), &options);
    register_checkpoint_conversion_mapping("llama", saved.unwrap_or_default(), true)?;
    let d = max_diff(
        &model?.forward(&tokens(), None)?,
        &original("llama-tiny").forward(&tokens(), None)?,
    );
    assert!(d < 1e-5, "{d}");
    Ok(())
}

/// The complete example: Qwen2-MoE with ModuleList experts and fused q/k/v with biases, the
/// family's conversion mapping overridden by the q/k/v concatenation; same logits, and saved
/// back to the original layout.
#[test]
fn complete_example() -> Fallible {
    let _registry = registry();
    register_patch_mapping(
        [
            ("Qwen2MoeExperts", Replacement::of::<ModuleListExperts>()),
            ("Qwen2MoeAttention", Replacement::of::<FusedQkvAttention>()),
        ],
        false,
    )?;
    let saved = get_checkpoint_conversion_mapping("qwen2_moe")?;
    register_checkpoint_conversion_mapping(
        "qwen2_moe",
        vec![
            WeightConverter::new(
                ["q_proj", "k_proj", "v_proj"],
                ["qkv_proj"],
                [Op::Concatenate { dim: 0 }],
            )
            .into(),
        ],
        true,
    )?;
    let loaded =
        AutoModelForCausalLM::from_pretrained(fixture("qwen2-moe-tiny"), &LoadOptions::default());
    let out = std::env::temp_dir().join(format!("frozen-use-cases-{}", std::process::id()));
    let result = loaded.map(|model| {
        (
            model.forward(&tokens(), None),
            model.save_pretrained(&out, &Default::default()),
        )
    });
    register_checkpoint_conversion_mapping("qwen2_moe", saved.unwrap_or_default(), true)?;
    let (logits, save) = result?;
    save?;
    let d = max_diff(
        &logits?,
        &original("qwen2-moe-tiny").forward(&tokens(), None)?,
    );
    assert!(d < 1e-4, "{d}");
    let read =
        |dir: &Path| candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu);
    let (a, b) = (read(&fixture("qwen2-moe-tiny"))?, read(&out)?);
    std::fs::remove_dir_all(&out)?;
    assert_eq!(
        a.keys().collect::<std::collections::BTreeSet<_>>(),
        b.keys().collect()
    );
    for (key, t) in &a {
        assert_eq!(
            max_diff(&t.to_dtype(DType::F32)?, &b[key].to_dtype(DType::F32)?),
            0.0,
            "{key}"
        );
    }
    Ok(())
}

/// Recording and replaying MoE routing, `output_selected_experts`, and vLLM's
/// `routed_experts`: the replay keeps the recorded experts after the router moved.
#[test]
fn routing_replay() -> Fallible {
    let _registry = registry();
    let plain = original("qwen3-moe-tiny");
    let record = ForwardOptions {
        output_router_logits: Some(true),
        ..ForwardOptions::default()
    };
    let recorded = recorded_experts(
        &plain
            .forward_with(&tokens(), None, None, &record)?
            .router_logits,
    );
    let moved = AutoModelForCausalLM::from_pretrained(
        fixture("qwen3-moe-tiny"),
        &LoadOptions::default().with_patches(PatchSet::from_mapping([(
            "TopKRouter$",
            Replacement::of::<MovedRouter>(),
        )])?),
    )?;
    let routes = |forced| -> std::result::Result<Vec<Vec<Vec<u32>>>, Box<dyn std::error::Error>> {
        let options = ForwardOptions {
            recorders: patchwork_models::decoder::Recorders::sites(["Qwen3MoeTopKRouter"])?, // output_selected_experts
            forced_experts: forced,
            ..ForwardOptions::default()
        };
        let out = moved.forward_with(&tokens(), None, None, &options)?;
        experts_from_records(&out.records)?
            .values()
            .map(|t| Ok(t.to_dtype(DType::U32)?.to_vec2()?))
            .collect()
    };
    let want: Vec<Vec<Vec<u32>>> = recorded
        .values()
        .map(|t| t.to_dtype(DType::U32)?.to_vec2())
        .collect::<candle_core::Result<_>>()?;
    assert_ne!(
        routes(Default::default())?,
        want,
        "the moved router chooses other experts"
    );
    assert_eq!(routes(recorded.clone())?, want);
    // vLLM: [seq_len, num_layers, top_k] ids, replayed with labels for a training loss.
    let layers: Vec<Tensor> = recorded.values().cloned().collect();
    let vllm = Tensor::stack(&layers, 1)?;
    let forced = experts_from_vllm(&vllm, moved.config())?;
    let options = ForwardOptions {
        labels: Some(tokens()),
        forced_experts: forced,
        ..ForwardOptions::default()
    };
    let loss = moved
        .forward_with(&tokens(), None, None, &options)?
        .loss
        .expect("a loss with labels");
    assert!(loss.to_scalar::<f32>()?.is_finite());
    Ok(())
}

/// `CUSTOM_CALLS` counts: the pattern-registered wrapper ran in a forward pass.
#[test]
fn a_wrapper_for_every_family_runs() -> Fallible {
    let _registry = registry();
    let set = PatchSet::from_mapping([(".*Attention$", Replacement::of::<CustomAttention>())])?;
    let model = AutoModelForCausalLM::from_pretrained(
        fixture("qwen3-tiny"),
        &LoadOptions::default().with_patches(set),
    )?;
    let before = CUSTOM_CALLS.load(Ordering::Relaxed);
    let d = max_diff(
        &model.forward(&tokens(), None)?,
        &original("qwen3-tiny").forward(&tokens(), None)?,
    );
    assert!(CUSTOM_CALLS.load(Ordering::Relaxed) > before);
    assert!(d < 1e-5, "{d}");
    Ok(())
}
