//! Checks of a config against what building from it will need, made before anything is built:
//! a config whose sizes the checkpoint contradicts is an error naming the key (not an
//! allocation abort halfway through the build), and a model that cannot fit in the memory
//! available is an error naming both sizes.

use candle_core::DType;
use patch_checkpoint::Checkpoint;
use patch_checkpoint::memory::{bytes_of, check};

use crate::decoder::{DecoderConfig, FeedForwardKind};
use crate::{Error, Result};

/// Checks `config` (read from `source_name`) against the tensors of `ckpt`: the layer count
/// against the layers stored, the standard tensors' shapes against the sizes, and the
/// parameter count against the values stored; then the memory the weights need in `dtype`.
pub(crate) fn check_against_checkpoint(
    config: &DecoderConfig,
    ckpt: &Checkpoint,
    source_name: &str,
    dtype: DType,
) -> Result<()> {
    let tensors = ckpt.tensors();
    let error = |key: &str, message: String| Err(Error::config(source_name, key, message));
    let stored_layers = tensors.iter().filter_map(|(k, _, _)| layer_index(k)).max();
    if let Some(last) = stored_layers
        && config.num_hidden_layers > last + 1
    {
        return error(
            "num_hidden_layers",
            format!(
                "is {}, but the checkpoint stores layers 0..={last} only",
                config.num_hidden_layers
            ),
        );
    }
    let shape_of = |suffix: &str| {
        tensors
            .iter()
            .find(|(k, _, _)| {
                k == suffix || (k.ends_with(suffix) && k[..k.len() - suffix.len()].ends_with('.'))
            })
            .map(|(k, _, shape)| (k.as_str(), shape.as_slice()))
    };
    if let Some((key, shape)) = shape_of("embed_tokens.weight")
        && let [vocab, hidden] = *shape
    {
        if vocab != config.vocab_size {
            return error(
                "vocab_size",
                format!("is {}, but {key} has shape {shape:?}", config.vocab_size),
            );
        }
        if hidden != config.hidden_size {
            return error(
                "hidden_size",
                format!("is {}, but {key} has shape {shape:?}", config.hidden_size),
            );
        }
    }
    if let Some((key, shape)) = shape_of("layers.0.self_attn.q_proj.weight")
        && let [rows, _] = *shape
    {
        let want = config.num_attention_heads * config.head_dim;
        if rows != want {
            return error(
                "head_dim",
                format!(
                    "num_attention_heads {} x head_dim {} = {want}, but {key} has shape {shape:?}",
                    config.num_attention_heads, config.head_dim
                ),
            );
        }
    }
    if let Some(i) = config
        .feed_forward
        .iter()
        .position(|k| *k == FeedForwardKind::Dense)
        && let Some((key, shape)) = shape_of(&format!("layers.{i}.mlp.gate_proj.weight"))
        && let [rows, _] = *shape
        && rows != config.intermediate_size
    {
        return error(
            "intermediate_size",
            format!(
                "is {}, but {key} has shape {shape:?}",
                config.intermediate_size
            ),
        );
    }
    let stored: u128 = tensors
        .iter()
        .map(|(_, _, shape)| shape.iter().map(|&d| d as u128).product::<u128>())
        .sum();
    let expected = config.parameter_count();
    if expected > 2 * stored + (1 << 20) {
        return error(
            "",
            format!(
                "its sizes (vocab_size {}, hidden_size {}, intermediate_size {}, num_hidden_layers {}, heads {} x head_dim {}{}) describe {expected} parameters, but the checkpoint stores {stored} values: the config does not describe these weights",
                config.vocab_size,
                config.hidden_size,
                config.intermediate_size,
                config.num_hidden_layers,
                config.num_attention_heads,
                config.head_dim,
                config.moe.as_ref().map_or(String::new(), |m| format!(
                    ", {} experts of {}",
                    m.num_experts, m.moe_intermediate_size
                )),
            ),
        );
    }
    let element = config
        .weight_dtype
        .unwrap_or(dtype)
        .size_in_bytes()
        .min(dtype.size_in_bytes())
        .max(1);
    check(
        bytes_of(stored.min(expected), element),
        || {
            format!(
                "loading {} ({} parameters in {dtype:?})",
                ckpt.dir().display(),
                stored.min(expected)
            )
        },
        "",
    )?;
    Ok(())
}

/// Checks that random weights for `config` in `dtype` fit in the memory available.
pub(crate) fn check_from_config(config: &DecoderConfig, dtype: DType) -> Result<()> {
    let n = config.parameter_count();
    check(
        bytes_of(n, dtype.size_in_bytes()),
        || format!("random weights for {n} parameters in {dtype:?}"),
        "check the sizes in the config",
    )?;
    Ok(())
}

/// `12` for `model.layers.12.mlp.down_proj.weight`.
fn layer_index(key: &str) -> Option<usize> {
    let mut parts = key.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_indices_come_from_the_layers_segment() {
        assert_eq!(
            layer_index("model.layers.12.mlp.down_proj.weight"),
            Some(12)
        );
        assert_eq!(layer_index("layers.3.x"), Some(3));
        assert_eq!(layer_index("model.norm.weight"), None);
        assert_eq!(layer_index("model.layers.x.y"), None);
    }
}
