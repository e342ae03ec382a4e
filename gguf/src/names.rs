//! GGUF tensor names and transformers' parameter names, both ways (llama.cpp's
//! `convert_hf_to_gguf.py` names, as its `gguf-py` `TensorNameMap` lists them for these
//! architectures).

/// How a transformers parameter is made from a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// One GGUF tensor, as it is.
    One(String),
    /// A GGUF tensor whose rows llama.cpp's converter interleaved for its rope (llama
    /// architecture q/k weights and biases): `heads` groups of rows to put back in order.
    Permuted {
        /// The GGUF tensor.
        name: String,
        /// Heads of the projection (query heads for q, key/value heads for k).
        heads: usize,
    },
    /// Two GGUF tensors stacked along their second dimension (an expert bank's gate then up:
    /// `[E, I, H]` each, `[E, 2I, H]` together).
    Stacked(String, String),
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::One(n) => write!(f, "GGUF tensor {n}"),
            Stored::Permuted { name, .. } => write!(f, "GGUF tensor {name} (rope rows reordered)"),
            Stored::Stacked(a, b) => write!(f, "GGUF tensors {a} and {b} stacked"),
        }
    }
}

/// Per-layer names: (GGUF suffix after `blk.N.`, transformers' name after `model.layers.N.`).
const LAYER: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("ffn_gate_inp.weight", "mlp.gate.weight"),
    // The experts' banks, one tensor each; `gate_up_proj` stacks the first two.
    ("ffn_gate_exps.weight", "mlp.experts.gate_proj"),
    ("ffn_up_exps.weight", "mlp.experts.up_proj"),
    ("ffn_down_exps.weight", "mlp.experts.down_proj"),
    (
        "ffn_gate_shexp.weight",
        "mlp.shared_expert.gate_proj.weight",
    ),
    ("ffn_up_shexp.weight", "mlp.shared_expert.up_proj.weight"),
    (
        "ffn_down_shexp.weight",
        "mlp.shared_expert.down_proj.weight",
    ),
    ("ffn_gate_inp_shexp.weight", "mlp.shared_expert_gate.weight"),
];

/// Names outside the layers: (GGUF, transformers).
const GLOBAL: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The transformers name of GGUF tensor `gguf`, if it is one of a model's parameters.
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf)) = GLOBAL.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    LAYER
        .iter()
        .find(|(g, _)| *g == suffix)
        .map(|(_, hf)| format!("model.layers.{layer}.{hf}"))
}

/// The GGUF tensor name of transformers parameter `hf` (for a stored one-to-one tensor).
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((g, _)) = GLOBAL.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    LAYER
        .iter()
        .find(|(_, h)| *h == suffix)
        .map(|(g, _)| format!("blk.{layer}.{g}"))
}

/// Whether the GGUF name is a layer's query or key projection (the tensors llama's converter
/// permutes), and which.
pub fn rope_permuted(gguf: &str) -> Option<QueryOrKey> {
    let suffix = gguf.strip_prefix("blk.")?.split_once('.')?.1;
    match suffix {
        "attn_q.weight" | "attn_q.bias" => Some(QueryOrKey::Query),
        "attn_k.weight" | "attn_k.bias" => Some(QueryOrKey::Key),
        _ => None,
    }
}

/// A query or a key projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryOrKey {
    /// `attn_q`: permuted over the query heads.
    Query,
    /// `attn_k`: permuted over the key/value heads.
    Key,
}

/// The order that puts back the rows of a projection llama.cpp's converter permuted over
/// `heads` heads: `order[i]` is the stored row that becomes row `i`. Within each head the
/// converter stores rows `(pair j, half t)` at `2j + t` where transformers has them at
/// `t * d/2 + j` (`d` rows per head); `None` when the rows do not split that way.
pub fn unpermute_order(rows: usize, heads: usize) -> Option<Vec<usize>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return None;
    }
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut order = Vec::with_capacity(rows);
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..half {
                order.push(h * per_head + 2 * j + t);
            }
        }
    }
    Some(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for gguf in [
            "token_embd.weight",
            "output.weight",
            "blk.3.attn_q.weight",
            "blk.0.ffn_down_exps.weight",
            "blk.12.ffn_gate_inp_shexp.weight",
        ] {
            let hf = hf_name(gguf).unwrap();
            assert_eq!(gguf_name(&hf).as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(
            hf_name("blk.3.attn_q.weight").as_deref(),
            Some("model.layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(rope_permuted("blk.1.attn_k.bias"), Some(QueryOrKey::Key));
        assert_eq!(rope_permuted("blk.1.attn_v.weight"), None);
    }

    /// The converter's permutation (`w.reshape(heads, 2, d/2, ..).swapaxes(1, 2)`) followed by
    /// this order gives back the original rows.
    #[test]
    fn unpermuting_undoes_the_converters_permutation() {
        let (rows, heads) = (24, 3);
        let (per_head, half) = (rows / heads, rows / heads / 2);
        // Stored row (h, j, t) holds original row (h, t, j).
        let mut stored = vec![0; rows];
        for h in 0..heads {
            for t in 0..2 {
                for j in 0..half {
                    stored[h * per_head + 2 * j + t] = h * per_head + t * half + j;
                }
            }
        }
        let order = unpermute_order(rows, heads).unwrap();
        let back: Vec<usize> = order.iter().map(|&i| stored[i]).collect();
        assert_eq!(back, (0..rows).collect::<Vec<_>>());
        assert_eq!(unpermute_order(10, 4), None);
        assert_eq!(unpermute_order(9, 3), None);
    }
}
