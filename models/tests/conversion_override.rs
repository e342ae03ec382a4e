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
        assert!(
            register_checkpoint_conversion_mapping(model_type.as_str(), Vec::new(), false).is_err(),
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
