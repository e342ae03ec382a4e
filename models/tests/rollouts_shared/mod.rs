//! What the rollouts tests share: qwen2-moe-tiny's config, four rollouts of uneven lengths in
//! every layout, and tensors as rows to compare with hand-written grids.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use patchwork_models::decoder::DecoderConfig;
use patchwork_models::rollouts::Rollout;

/// A folder of `fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

/// The config of `fixtures/NAME`, parsed without building a model.
pub fn config_of(name: &str) -> DecoderConfig {
    let path = fixture(name).join("config.json");
    let json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    patchwork_models::family::decoder_config(&json, name).unwrap()
}

/// qwen2-moe-tiny's config: 3 layers, layer 1 dense (MoE layers 0 and 2), 8 experts, top-2,
/// vocabulary 256, eos 2 and no pad token.
pub fn config() -> DecoderConfig {
    config_of("qwen2-moe-tiny")
}

/// `[rows, 2 layers, top-2]` ids.
pub fn ids3(rows: &[[[i64; 2]; 2]]) -> Tensor {
    let flat: Vec<i64> = rows.iter().flatten().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), 2, 2), &Device::Cpu).unwrap()
}

/// The four rollouts the batch tests pad (see each line).
pub fn rollouts() -> Vec<Rollout> {
    // 3 + 2 tokens; vLLM's layout over the MoE layers only: 4 rows (every token but the last).
    let r0 = Rollout::new(&[10, 11, 12], &[13, 14]).with_routed_experts(ids3(&[
        [[0, 7], [1, 6]],
        [[1, 6], [2, 5]],
        [[2, 5], [3, 4]],
        [[3, 4], [4, 3]],
    ]));
    // 1 + 2 tokens; every decoder layer on the axis (the dense layer 1 left zero, as SGLang).
    let all_layers = Tensor::new(
        &[[[5i64, 6], [0, 0], [7, 0]], [[6, 7], [0, 0], [0, 1]]],
        &Device::Cpu,
    )
    .unwrap();
    let r1 = Rollout::new(&[20], &[21, 22]).with_routed_experts(all_layers);
    // 2 + 1 tokens with a row for every token (as `generate` returns): the last row is ignored.
    let r2 = Rollout::new(&[30, 31], &[32]).with_routed_experts(ids3(&[
        [[1, 2], [3, 4]],
        [[2, 3], [4, 5]],
        [[7, 7], [6, 6]],
    ]));
    // 2 + 0 tokens, no routing: routes freely.
    let r3 = Rollout::new(&[40, 41], &[]);
    vec![r0, r1, r2, r3]
}

/// A `[B, T]` tensor's rows.
pub fn rows(t: &Tensor) -> Vec<Vec<i64>> {
    t.to_vec2::<i64>().unwrap()
}

/// A `[B * T, 2]` routing tensor as `B` rows of `T` pairs.
pub fn grid(t: &Tensor, seq: usize) -> Vec<Vec<[i64; 2]>> {
    let pairs: Vec<[i64; 2]> = rows(t).into_iter().map(|p| [p[0], p[1]]).collect();
    pairs.chunks(seq).map(<[_]>::to_vec).collect()
}

/// A token routing freely.
pub const F: [i64; 2] = [-1, -1];
/// An ignored label.
pub const X: i64 = -100;
