//! A MoE family's checkpoint layout is a link-time conversion mapping under its `model_type`,
//! overridable as upstream (`register_checkpoint_conversion_mapping(.., overwrite)`). Its own
//! test binary: it changes the process-wide registry.

mod common;

use patch_core::PatchSet;
use patch_core::checkpoint::{
    checkpoint_conversion_mapping_for, mappings, register_checkpoint_conversion_mapping,
    unregister_checkpoint_conversion_mapping,
};
use patchwork_models::{AutoModelForCausalLM, LoadOptions};

#[test]
fn every_moe_familys_expert_stacking_is_a_default_the_user_can_override() {
    let options = LoadOptions::default().with_patches(PatchSet::empty());
    for f in common::fixtures() {
        let model_type = f.model_type().to_string();
        let Some((key, transforms)) = checkpoint_conversion_mapping_for(&f.config).unwrap() else {
            continue;
        };
        assert_eq!(
            transforms,
            mappings::qwen2_moe(),
            "{}: the expert stacking",
            f.name
        );
        let e = register_checkpoint_conversion_mapping(model_type.as_str(), Vec::new(), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is already registered for") && e.contains("pass overwrite = true"),
            "{}: registering over the default needs overwrite",
            f.name
        );
        // Overridden by an empty mapping: the per-expert keys are no longer stacked, and the
        // strict load names both sides.
        register_checkpoint_conversion_mapping(model_type.as_str(), Vec::new(), true).unwrap();
        let err = AutoModelForCausalLM::from_pretrained(&f.dir, &options)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mlp.experts.gate_up_proj")
                && err.contains("mlp.experts.0.gate_proj.weight"),
            "{}: {err}",
            f.name
        );
        // Back to the link-time default.
        unregister_checkpoint_conversion_mapping(model_type.as_str()).unwrap();
        register_checkpoint_conversion_mapping(model_type.as_str(), mappings::qwen2_moe(), true)
            .unwrap();
        AutoModelForCausalLM::from_pretrained(&f.dir, &options).unwrap();
        eprintln!("{}: {key} mapping overridden and restored", f.name);
    }
}

/// A leaked conversion (the stacking mapping removed): the error lists what is missing and
/// folds the per-expert keys it explains into one line each, not one line per key.
#[test]
fn an_accounting_error_folds_the_keys_a_missing_tensor_explains() {
    use patch_core::checkpoint::{CheckpointSource, Error, Weights};
    let f = common::fixtures()
        .into_iter()
        .find(|f| f.name == "qwen2-moe-tiny")
        .unwrap();
    let ckpt = patch_core::checkpoint::Checkpoint::open(&f.dir).unwrap();
    let source: CheckpointSource = ckpt.source(Vec::new()).unwrap();
    let weights = Weights::new(source, candle_core::DType::F32, &candle_core::Device::Cpu);
    let config =
        patchwork_models::qwen2_moe::Qwen2MoeConfig::from_json(&f.config, "config.json").unwrap();
    let config = config
        .decoder_config(std::sync::Arc::new(f.config.clone()), "config.json")
        .unwrap();
    let family = patchwork_models::family::family("qwen2_moe", "test").unwrap();
    let b = patch_core::Builder::new(weights.clone()).with_patches(PatchSet::empty());
    patchwork_models::CausalLM::build(&b, config, family).unwrap();
    let err = weights.finish().unwrap_err();
    let text = err.to_string();
    let Error::Accounting { problems, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(
        problems.len(),
        4 + 48,
        "2 MoE layers x 2 stacked tensors, 48 per-expert keys"
    );
    let lines: Vec<&str> = text.lines().collect();
    // The counts, the 4 missing tensors, one folded line per layer's 24 per-expert keys.
    assert_eq!(lines.len(), 1 + 4 + 2, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("unexpected  24 checkpoint keys under model.layers.0.mlp.experts")),
        "{text}"
    );
    let all = patch_core::checkpoint::format_problems(problems, usize::MAX);
    assert!(all.lines().count() < 52, "{all}");
}
