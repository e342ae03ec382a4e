//! The additive attention bias of a forward pass: causal, padding and sliding-window masking
//! in one `[batch, 1, queries, keys]` tensor.

use candle_core::{DType, Device, Tensor};

use crate::decoder::config::AttentionKind;

/// The bias for `q_len` queries at cache positions `past .. past + q_len` over keys
/// `0 .. past + q_len`, whose padding mask row `r` is `key_mask(r)` (1 = real token).
///
/// A query sees a key when the key is not after it, is a real token, and (sliding layers) is
/// less than `window` positions behind it. A padding query, which nothing reads, sees itself
/// only, so no row is fully masked and softmax stays finite. Masked entries are `-inf`.
///
/// Returns `None` when nothing would be masked (one query, no padding, window not reached):
/// decoding steps of an unpadded batch then skip the addition.
pub fn attention_bias<'m>(
    batch: usize,
    past: usize,
    q_len: usize,
    kind: AttentionKind,
    key_mask: impl Fn(usize) -> &'m [u8],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    let kv_len = past + q_len;
    let window = match kind {
        AttentionKind::Full => usize::MAX,
        AttentionKind::Sliding { window } => window,
    };
    let padded = (0..batch).any(|r| key_mask(r).contains(&0));
    if q_len == 1 && !padded && kv_len <= window {
        return Ok(None);
    }
    let mut bias = vec![0f32; batch * q_len * kv_len];
    for r in 0..batch {
        let keys = key_mask(r);
        for t in 0..q_len {
            let q = past + t;
            let row = &mut bias[(r * q_len + t) * kv_len..(r * q_len + t + 1) * kv_len];
            let query_is_pad = keys[q] == 0;
            for (s, slot) in row.iter_mut().enumerate() {
                let visible = if query_is_pad {
                    s == q
                } else {
                    s <= q && keys[s] != 0 && q - s < window
                };
                if !visible {
                    *slot = f32::NEG_INFINITY;
                }
            }
        }
    }
    Tensor::from_vec(bias, (batch, 1, q_len, kv_len), device)?
        .to_dtype(dtype)
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bias(
        past: usize,
        q: usize,
        kind: AttentionKind,
        mask: &[Vec<u8>],
    ) -> Option<Vec<Vec<Vec<f32>>>> {
        attention_bias(
            mask.len(),
            past,
            q,
            kind,
            |r| &mask[r],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
        .map(|t| t.squeeze(1).unwrap().to_vec3().unwrap())
    }

    #[test]
    fn causal_padding_and_window_masks() {
        let inf = f32::NEG_INFINITY;
        let b = bias(0, 3, AttentionKind::Full, &[vec![1, 1, 1], vec![0, 1, 1]]).unwrap();
        assert_eq!(
            b[0],
            vec![
                vec![0.0, inf, inf],
                vec![0.0, 0.0, inf],
                vec![0.0, 0.0, 0.0]
            ]
        );
        // Left padding: the pad query sees itself only, real queries never see the pad.
        assert_eq!(
            b[1],
            vec![
                vec![0.0, inf, inf],
                vec![inf, 0.0, inf],
                vec![inf, 0.0, 0.0]
            ]
        );
        let w = bias(0, 3, AttentionKind::Sliding { window: 2 }, &[vec![1, 1, 1]]).unwrap();
        assert_eq!(w[0][2], vec![inf, 0.0, 0.0]);
        // One unpadded query inside the window: no mask at all.
        assert!(bias(2, 1, AttentionKind::Full, &[vec![1, 1, 1]]).is_none());
        let step = bias(2, 1, AttentionKind::Sliding { window: 2 }, &[vec![1, 1, 1]]).unwrap();
        assert_eq!(step[0], vec![vec![inf, 0.0, 0.0]]);
    }
}
