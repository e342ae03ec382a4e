//! How the trainer's own routing compares with a rollout's, layer by layer and token by token.

use std::collections::BTreeMap;

/// One MoE layer: how often the trainer's router picks the rollout's experts.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerAgreement {
    /// Absolute layer index.
    pub layer: usize,
    /// Tokens compared: real (mask 1) tokens whose rollout routing was recorded in full (no
    /// -1 among its `top_k` ids).
    pub tokens: usize,
    /// Tokens whose top-k set is the same (in any order).
    pub identical: usize,
    /// `identical / tokens` (`None` when no token was compared).
    pub share_identical: Option<f64>,
    /// Mean over the compared tokens of `|trainer's set ∩ rollout's set| / top_k`.
    pub mean_overlap: Option<f64>,
}

/// One token: in how many MoE layers the trainer's top-k set differs from the rollout's.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenAgreement {
    /// Batch row.
    pub row: usize,
    /// Column in the row (padding included: the position in `input_ids`).
    pub position: usize,
    /// MoE layers compared at this token.
    pub layers_compared: usize,
    /// How many of them differ.
    pub layers_differing: usize,
    /// Which (absolute indices).
    pub differing_layers: Vec<usize>,
}

/// Compares `trainer`'s expert ids with `rollout`'s (`[rows * seq * top_k]` i64 each, by
/// absolute layer; `rollout`'s layers are the ones compared), at the tokens `mask` keeps
/// (`rows * seq` entries, 1 = token). A token is compared in a layer when its rollout ids are
/// all recorded (none -1). Tokens come back in row-major order, only those compared in some
/// layer.
pub(crate) fn compare_routing(
    trainer: &BTreeMap<usize, Vec<i64>>,
    rollout: &BTreeMap<usize, Vec<i64>>,
    top_k: usize,
    mask: &[u8],
    seq: usize,
) -> (Vec<LayerAgreement>, Vec<TokenAgreement>) {
    let tokens = mask.len();
    let mut per_token: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); tokens];
    let mut layers = Vec::with_capacity(rollout.len());
    for (&layer, recorded) in rollout {
        let Some(own) = trainer.get(&layer) else {
            continue;
        };
        let (mut compared, mut identical, mut overlap) = (0usize, 0usize, 0f64);
        for (token, seen) in per_token.iter_mut().enumerate() {
            let range = token * top_k..(token + 1) * top_k;
            let (Some(r), Some(o)) = (recorded.get(range.clone()), own.get(range)) else {
                continue;
            };
            if mask[token] == 0 || r.iter().any(|&e| e < 0) {
                continue;
            }
            compared += 1;
            seen.0 += 1;
            let mut shared: Vec<i64> = o.iter().copied().filter(|e| r.contains(e)).collect();
            shared.sort_unstable();
            shared.dedup();
            overlap += shared.len() as f64 / top_k as f64;
            if same_set(o, r) {
                identical += 1;
            } else {
                seen.1.push(layer);
            }
        }
        let share = |x: f64| (compared > 0).then(|| x / compared as f64);
        layers.push(LayerAgreement {
            layer,
            tokens: compared,
            identical,
            share_identical: share(identical as f64),
            mean_overlap: share(overlap),
        });
    }
    let tokens = per_token
        .into_iter()
        .enumerate()
        .filter(|(_, (compared, _))| *compared > 0)
        .map(|(token, (compared, differing))| TokenAgreement {
            row: token / seq.max(1),
            position: token % seq.max(1),
            layers_compared: compared,
            layers_differing: differing.len(),
            differing_layers: differing,
        })
        .collect();
    (layers, tokens)
}

/// Whether `a` and `b` hold the same experts, in any order.
fn same_set(a: &[i64], b: &[i64]) -> bool {
    a.iter().all(|e| b.contains(e)) && b.iter().all(|e| a.contains(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sets_overlaps_and_skips_padding_and_unrecorded_tokens() {
        // One row of 4 positions, top-2, layers 0 and 2; position 3 is padding.
        let trainer = BTreeMap::from([
            (0, vec![1, 2, 3, 4, 5, 6, 7, 0]),
            (2, vec![0, 1, 0, 1, 0, 1, 0, 1]),
        ]);
        let rollout = BTreeMap::from([
            // Position 0 the same set in another order, 1 one expert changed, 2 both, 3 padding.
            (0, vec![2, 1, 3, 7, 0, 1, 9, 9]),
            // Position 1 unrecorded (-1): not compared; the others identical.
            (2, vec![0, 1, -1, -1, 1, 0, 0, 1]),
        ]);
        let (layers, tokens) = compare_routing(&trainer, &rollout, 2, &[1, 1, 1, 0], 4);
        assert_eq!(
            layers[0],
            LayerAgreement {
                layer: 0,
                tokens: 3,
                identical: 1,
                share_identical: Some(1.0 / 3.0),
                mean_overlap: Some((1.0 + 0.5 + 0.0) / 3.0),
            }
        );
        assert_eq!(
            (
                layers[1].tokens,
                layers[1].identical,
                layers[1].mean_overlap
            ),
            (2, 2, Some(1.0))
        );
        let differing: Vec<(usize, usize, Vec<usize>)> = tokens
            .iter()
            .map(|t| (t.position, t.layers_compared, t.differing_layers.clone()))
            .collect();
        assert_eq!(
            differing,
            [(0, 2, vec![]), (1, 1, vec![0]), (2, 2, vec![0])]
        );
    }
}
