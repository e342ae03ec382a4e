//! FROZEN (see `src/lib.rs`): the page's weight-conversion, complete-example and routing
//! blocks, and one wrapper for every family.
//! Written as a user writes them against patchwork 0.2.0; edited only by applying
//! CHANGELOG.md's migration lines.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use candle_core::{DType, Device, Tensor};
use frozen_use_cases::{
    CUSTOM_CALLS, CustomAttention, FusedQkvAttention, ModuleListExperts, MovedRouter,
};
use patch_core::checkpoint::{
    get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping,
};
use patchwork_models::prelude::*;
use patchwork_models::routing::{experts_from_records, experts_from_vllm, recorded_experts};

use common::*;

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
