//! `MoeKeys` has no `Default` either: Qwen3-MoE's expert counts are not Qwen2-MoE's.

use patchwork_models::decoder::MoeKeys;
use patchwork_models::qwen3_moe::Qwen3MoeConfig;

fn main() {
    let _config = Qwen3MoeConfig {
        moe: MoeKeys {
            num_experts: 4,
            ..Default::default()
        },
        ..Qwen3MoeConfig::default()
    };
}
