//! SGLang's `routed_experts`, as its server returns them.
//!
//! What SGLang returns, read from its sources (sgl-project/sglang, `python/sglang/srt/`):
//!
//! - `state_capturer/base.py` (`BaseTopkCapturer.get_topk`): a finished request's routing is
//!   the host buffer rows of its positions `start_len .. seqlen - 1`, each row
//!   `[num_hidden_layers, num_experts_per_tok]` int32: every token but the last one (the last
//!   generated token never went through a forward pass), token-major. `start_len` is the
//!   request's `routed_experts_start_len` (0 by default).
//! - `state_capturer/routed_experts.py` (`RoutedExpertsCapturer`): the layer axis counts
//!   `hf_text_config.num_hidden_layers`, indexed by the layer id, so dense layers keep the
//!   buffer's zeros; fused shared experts are cut off (`[:topk_size]`).
//! - `state_capturer/routed_experts_wire.py` (`encode_routed_experts_for_wire`,
//!   `extract_routed_experts_from_meta_info`): the array is sent flat, row-major, as base64 of
//!   its bytes, in `meta_info["routed_experts"]` (`/generate`) or `sglext.routed_experts` (the
//!   OpenAI endpoints); its dtype is `meta_info["routed_experts_dtype"]` (`int32`, `uint16` or
//!   `uint8`), int32 when absent (older servers).
//!
//! [`sglang_routed_experts`] turns that string into vLLM's layout `[rows, num_hidden_layers,
//! top_k]`, which [`crate::routing::experts_from_vllm`] and [`super::Rollout`] take.

use candle_core::{Device, Tensor};

use crate::decoder::DecoderConfig;
use crate::{Error, Result};

/// Decodes SGLang's base64 `routed_experts` (see the module docs) into `[rows,
/// num_hidden_layers, top_k]` i64 ids, vLLM's layout. `dtype` is `routed_experts_dtype`
/// (`int32`, `uint16` or `uint8`; `None` is int32, as SGLang reads it); the values are
/// little-endian. An error names the dtype, the byte and value counts, and the layout they
/// fail to fill.
///
/// ```
/// use patchwork_models::rollouts::sglang_routed_experts;
/// let config = serde_json::json!({
///     "model_type": "qwen2_moe", "vocab_size": 32, "hidden_size": 16,
///     "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
///     "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 1,
///     "moe_intermediate_size": 8, "shared_expert_intermediate_size": 0,
/// });
/// let config = patchwork_models::family::decoder_config(&config, "config")?;
/// // Two tokens x two layers x one expert, uint8: [[3], [1]], [[0], [2]].
/// let ids = sglang_routed_experts("AwEAAg==", Some("uint8"), &config)?;
/// assert_eq!(ids.dims(), [2, 2, 1]);
/// assert_eq!(ids.flatten_all()?.to_vec1::<i64>()?, [3, 1, 0, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn sglang_routed_experts(
    encoded: &str,
    dtype: Option<&str>,
    config: &DecoderConfig,
) -> Result<Tensor> {
    let name = "routed_experts";
    let top_k = config.moe()?.num_experts_per_tok;
    let layers = config.num_hidden_layers;
    let bytes = decode_base64(encoded).map_err(|m| Error::input(name, m))?;
    let dtype_name = dtype.map_or("int32".to_string(), |d| d.trim().to_ascii_lowercase());
    let width = match dtype_name.as_str() {
        "int32" => 4,
        "uint16" => 2,
        "uint8" => 1,
        other => {
            return Err(Error::input(
                "routed_experts_dtype",
                format!("{other:?}: expected int32, uint16 or uint8 (SGLang's wire dtypes)"),
            ));
        }
    };
    if !bytes.len().is_multiple_of(width) {
        return Err(Error::input(
            name,
            format!(
                "{} bytes are not a whole number of {dtype_name} values",
                bytes.len()
            ),
        ));
    }
    let values: Vec<i64> = bytes
        .chunks_exact(width)
        .map(|c| match c {
            [a, b, c, d] => i32::from_le_bytes([*a, *b, *c, *d]) as i64,
            [a, b] => u16::from_le_bytes([*a, *b]) as i64,
            [a] => *a as i64,
            _ => unreachable!("chunks of the dtype's width"),
        })
        .collect();
    let per_row = layers
        .checked_mul(top_k)
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::input(name, format!("{layers} layers x {top_k} experts")))?;
    if !values.len().is_multiple_of(per_row) {
        return Err(Error::input(
            name,
            format!(
                "{} {dtype_name} values are not whole rows of num_hidden_layers {layers} x top_k {top_k} (SGLang's layout)",
                values.len()
            ),
        ));
    }
    let rows = values.len() / per_row;
    Ok(Tensor::from_vec(
        values,
        (rows, layers, top_k),
        &Device::Cpu,
    )?)
}

/// Encodes `ids` (`[rows, layers, top_k]`, any integer dtype) as SGLang sends them: the int32
/// values row-major, little-endian, in standard base64 (`routed_experts_dtype` `int32`). The
/// inverse of [`sglang_routed_experts`], for tools and tests that stand in for an SGLang
/// server.
pub fn encode_sglang_routed_experts(ids: &Tensor) -> Result<String> {
    ids.dims3().map_err(|_| {
        Error::input(
            "routed_experts",
            format!("expected [rows, layers, top_k], found {:?}", ids.dims()),
        )
    })?;
    let values = crate::loss::integer_values("routed_experts", ids)?;
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for (i, v) in values.iter().enumerate() {
        let v = i32::try_from(*v).map_err(|_| {
            Error::input(
                "routed_experts",
                format!("value {v} at {i} does not fit int32"),
            )
        })?;
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    Ok(encode_base64(&bytes))
}

/// Standard base64 with `=` padding, as Python's `base64.b64encode`.
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut acc = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            acc |= (b as u32) << (16 - 8 * i);
        }
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((acc >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The value of one character of the standard base64 alphabet.
fn sextet(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Decodes standard base64 (RFC 4648 alphabet, `=` padding optional); an error names the
/// first character that is not base64 and its offset.
pub(crate) fn decode_base64(text: &str) -> std::result::Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let body = bytes
        .iter()
        .rposition(|&c| c != b'=')
        .map_or(&bytes[..0], |last| &bytes[..=last]);
    let padding = bytes.len() - body.len();
    if padding > 2 || (padding > 0 && !bytes.len().is_multiple_of(4)) {
        return Err(format!(
            "base64 of {} characters ends in {padding} '=': not valid padding",
            bytes.len()
        ));
    }
    if body.len() % 4 == 1 {
        return Err(format!(
            "base64 of {} characters: a lone last character is not a whole byte",
            body.len()
        ));
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    for (chunk_index, chunk) in body.chunks(4).enumerate() {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = sextet(c).ok_or_else(|| {
                format!(
                    "character {:?} at offset {} is not base64",
                    c as char,
                    chunk_index * 4 + i
                )
            })?;
            acc |= v << (18 - 6 * i);
        }
        let [_, a, b, c] = acc.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..chunk.len() - 1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DecoderConfig {
        let json = serde_json::json!({
            "model_type": "qwen2_moe", "vocab_size": 32, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
            "num_key_value_heads": 2, "num_experts": 8, "num_experts_per_tok": 2,
            "moe_intermediate_size": 8, "shared_expert_intermediate_size": 0,
            "mlp_only_layers": [1],
        });
        crate::family::decoder_config(&json, "config").unwrap()
    }

    #[test]
    fn base64_decodes_as_python_encodes() {
        // base64.b64encode(b"") / b"f" / b"fo" / b"foo" / b"foob" / b"\xff\xfe\x00".
        for (text, bytes) in [
            ("", &b""[..]),
            ("Zg==", b"f"),
            ("Zm8=", b"fo"),
            ("Zm9v", b"foo"),
            ("Zm9vYg==", b"foob"),
            ("Zm9vYg", b"foob"),
            ("//4A", b"\xff\xfe\x00"),
        ] {
            assert_eq!(decode_base64(text).unwrap(), bytes, "{text}");
        }
        let err = decode_base64("Zm9v!g==").unwrap_err();
        assert!(err.contains("'!' at offset 4"), "{err}");
        assert!(decode_base64("Zm9vY").unwrap_err().contains("lone last"));
        assert!(decode_base64("Zg===").unwrap_err().contains("padding"));
    }

    #[test]
    fn int32_rows_cover_every_layer_token_major() {
        // numpy: np.array([[[0,1],[0,0],[7,2]], [[3,4],[0,0],[5,6]]], np.int32).tobytes(),
        // base64-encoded: two tokens, three layers (layer 1 dense, left zero), top-2.
        let values: [i32; 12] = [0, 1, 0, 0, 7, 2, 3, 4, 0, 0, 5, 6];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let text = encode(&bytes);
        let ids = sglang_routed_experts(&text, None, &config()).unwrap();
        assert_eq!(ids.dims(), [2, 3, 2]);
        assert_eq!(
            ids.to_vec3::<i64>().unwrap(),
            [[[0, 1], [0, 0], [7, 2]], [[3, 4], [0, 0], [5, 6]]]
        );
        let same = sglang_routed_experts(&text, Some(" INT32 "), &config()).unwrap();
        assert_eq!(
            same.to_vec3::<i64>().unwrap(),
            ids.to_vec3::<i64>().unwrap()
        );
        // A negative sentinel survives int32.
        let minus: Vec<u8> = [-1i32; 6].iter().flat_map(|v| v.to_le_bytes()).collect();
        let ids = sglang_routed_experts(&encode(&minus), None, &config()).unwrap();
        assert_eq!(
            ids.to_vec3::<i64>().unwrap(),
            [[[-1, -1], [-1, -1], [-1, -1]]]
        );
        // uint16, little-endian.
        let wide: Vec<u8> = [1u16, 300, 0, 0, 2, 3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let ids = sglang_routed_experts(&encode(&wide), Some("uint16"), &config()).unwrap();
        assert_eq!(ids.to_vec3::<i64>().unwrap(), [[[1, 300], [0, 0], [2, 3]]]);
    }

    #[test]
    fn wrong_sizes_and_dtypes_are_errors() {
        let c = config();
        let err = sglang_routed_experts(&encode(&[0; 10]), None, &c)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10 bytes are not a whole number of int32"),
            "{err}"
        );
        let err = sglang_routed_experts(&encode(&[0; 16]), None, &c)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("4 int32 values are not whole rows of num_hidden_layers 3 x top_k 2"),
            "{err}"
        );
        let err = sglang_routed_experts("", Some("int64"), &c)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"int64\": expected int32, uint16 or uint8"),
            "{err}"
        );
    }

    fn encode(bytes: &[u8]) -> String {
        encode_base64(bytes)
    }
}
