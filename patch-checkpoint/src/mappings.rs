//! Ready-made conversion mappings for the model families patchwork ships, as plain functions:
//! the models crate submits them as link-time defaults, tools and tests can register them in
//! their own [`ConversionRegistry`](crate::ConversionRegistry).
//!
//! The models crate submits Qwen2-MoE's with one line next to the model (through
//! `patch_core::checkpoint::...` there):
//!
//! ```
//! patch_checkpoint::submit_conversion_mapping!("qwen2_moe", patch_checkpoint::mappings::qwen2_moe);
//!
//! let config = serde_json::json!({"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe"});
//! let (key, transforms) = patch_checkpoint::checkpoint_conversion_mapping_for(&config).unwrap().unwrap();
//! assert_eq!((key.as_str(), transforms), ("qwen2_moe", patch_checkpoint::mappings::qwen2_moe()));
//! ```

use crate::{Op, Transform, WeightConverter};

/// Qwen2-MoE's expert stacking, as transformers (v5) does it: the Hub checkpoints store one
/// module per expert; the model holds `mlp.experts.gate_up_proj` `[E, 2I, H]` (gate rows
/// first) and `mlp.experts.down_proj` `[E, H, I]`.
pub fn qwen2_moe() -> Vec<Transform> {
    vec![
        WeightConverter::new(
            [
                "mlp.experts.*.gate_proj.weight",
                "mlp.experts.*.up_proj.weight",
            ],
            ["mlp.experts.gate_up_proj"],
            [Op::MergeModulelist { dim: 0 }, Op::Concatenate { dim: 1 }],
        )
        .into(),
        WeightConverter::new(
            ["mlp.experts.*.down_proj.weight"],
            ["mlp.experts.down_proj"],
            [Op::MergeModulelist { dim: 0 }],
        )
        .into(),
    ]
}
