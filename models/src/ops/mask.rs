//! Which keys each query of a pass may attend to: causal, padding and sliding-window masking,
//! described rather than materialised, so a long pass never holds a `queries x keys` buffer.

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

/// The masking of one attention call: `q_len` queries at cache positions `past .. past +
/// q_len` over keys `0 .. past + q_len`, row `r`'s keys marked real or padding by
/// [`AttentionMask::key_mask`].
///
/// A query sees a key when the key is not after it, is a real token, and (sliding layers) is
/// less than `window` positions behind it. A padding query, which nothing reads, sees itself
/// only, so no row is fully masked and softmax stays finite.
///
/// The fused kernel reads this description directly; [`AttentionMask::bias`] materialises
/// the additive bias (`0` or `-inf`, `[batch, 1, q_len, kv_len]`) once, for code that adds it
/// to scores, and [`AttentionMask::bias_rows`] a block of its rows, for code that works in
/// blocks of queries.
#[derive(Debug)]
pub struct AttentionMask {
    batch: usize,
    past: usize,
    q_len: usize,
    window: Option<usize>,
    /// `batch x kv_len`, 1 where the key is a real token.
    key_mask: Vec<u8>,
    padded: bool,
    dtype: DType,
    device: Device,
    bias: OnceLock<Tensor>,
}

impl AttentionMask {
    /// The mask of `q_len` queries after `past` cached positions, with `key_mask` (`batch x
    /// (past + q_len)`, 1 = real token) and an optional sliding `window`; a materialised bias
    /// comes in `dtype` on `device`.
    pub fn new(
        batch: usize,
        past: usize,
        q_len: usize,
        window: Option<usize>,
        key_mask: Vec<u8>,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let kv_len = past
            .checked_add(q_len)
            .ok_or_else(|| candle_core::Error::Msg("attention mask: too many positions".into()))?;
        if batch.checked_mul(kv_len) != Some(key_mask.len()) {
            candle_core::bail!(
                "attention mask: {} key flags for {batch} rows of {kv_len} keys",
                key_mask.len()
            );
        }
        if window == Some(0) {
            candle_core::bail!("attention mask: a sliding window of 0 positions");
        }
        let padded = key_mask.contains(&0);
        Ok(Self {
            batch,
            past,
            q_len,
            window,
            key_mask,
            padded,
            dtype,
            device: device.clone(),
            bias: OnceLock::new(),
        })
    }

    /// Causal masking of `q_len` queries over themselves, no padding, no window.
    pub fn causal(
        batch: usize,
        q_len: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let flags = batch
            .checked_mul(q_len)
            .ok_or_else(|| candle_core::Error::Msg("attention mask: too many positions".into()))?;
        Self::new(batch, 0, q_len, None, vec![1; flags], dtype, device)
    }

    /// Rows.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Cached positions before the pass's queries.
    pub fn past(&self) -> usize {
        self.past
    }

    /// Queries.
    pub fn q_len(&self) -> usize {
        self.q_len
    }

    /// Keys (`past + q_len`).
    pub fn kv_len(&self) -> usize {
        self.past + self.q_len
    }

    /// The sliding window, if any.
    pub fn window(&self) -> Option<usize> {
        self.window
    }

    /// Row `row`'s key flags (`kv_len` of them, 1 = real token).
    pub fn key_mask(&self, row: usize) -> &[u8] {
        let n = self.kv_len();
        &self.key_mask[row * n..(row + 1) * n]
    }

    /// Whether nothing is masked (one unpadded query inside its window: a decoding step),
    /// so attention may skip masking altogether.
    pub fn is_empty(&self) -> bool {
        self.q_len == 1 && !self.padded && self.window.is_none_or(|w| self.kv_len() <= w)
    }

    /// Whether query `t` of `row` sees key `s`.
    pub fn visible(&self, row: usize, t: usize, s: usize) -> bool {
        let q = self.past + t;
        let keys = self.key_mask(row);
        if keys[q] == 0 {
            return s == q;
        }
        s <= q && keys[s] != 0 && self.window.is_none_or(|w| q - s < w)
    }

    /// The kernels' view of this mask.
    pub(crate) fn view(&self) -> crate::kernels::attention::MaskView<'_> {
        crate::kernels::attention::MaskView {
            past: self.past,
            window: self.window.unwrap_or(usize::MAX),
            key_mask: &self.key_mask,
            padded: self.padded,
        }
    }

    /// The additive bias of queries `start .. start + len`: `[batch, 1, len, kv_len]`, `0`
    /// where a key is visible and `-inf` where not, in the mask's dtype and device; `None`
    /// when nothing is masked. Its size is checked against the memory available.
    pub fn bias_rows(&self, start: usize, len: usize) -> candle_core::Result<Option<Tensor>> {
        if self.is_empty() {
            return Ok(None);
        }
        if start.checked_add(len).is_none_or(|end| end > self.q_len) {
            candle_core::bail!(
                "attention mask: rows {start}..{start}+{len} of {} queries",
                self.q_len
            );
        }
        let kv_len = self.kv_len();
        let elements = (self.batch as u128) * (len as u128) * (kv_len as u128);
        patch_checkpoint::memory::check(
            patch_checkpoint::memory::bytes_of(elements, 4),
            || {
                format!(
                    "the attention bias of {} queries over {kv_len} keys",
                    self.batch * len
                )
            },
            "attention that does not need the bias (the default \"sdpa\") never builds it",
        )
        .map_err(candle_core::Error::wrap)?;
        let mut bias = vec![0f32; self.batch * len * kv_len];
        for (i, row) in bias.chunks_mut(kv_len.max(1)).enumerate() {
            let (r, t) = (i / len.max(1), start + i % len.max(1));
            for (s, slot) in row.iter_mut().enumerate() {
                if !self.visible(r, t, s) {
                    *slot = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_vec(bias, (self.batch, 1, len, kv_len), &self.device)?
            .to_dtype(self.dtype)
            .map(Some)
    }

    /// The whole additive bias `[batch, 1, q_len, kv_len]` (see [`AttentionMask::bias_rows`]),
    /// built on first use and kept; `None` when nothing is masked.
    pub fn bias(&self) -> candle_core::Result<Option<Tensor>> {
        if self.is_empty() {
            return Ok(None);
        }
        if let Some(b) = self.bias.get() {
            return Ok(Some(b.clone()));
        }
        let Some(b) = self.bias_rows(0, self.q_len)? else {
            return Ok(None);
        };
        Ok(Some(self.bias.get_or_init(|| b).clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bias(
        past: usize,
        q: usize,
        window: Option<usize>,
        mask: &[Vec<u8>],
    ) -> Option<Vec<Vec<Vec<f32>>>> {
        let flags: Vec<u8> = mask.concat();
        AttentionMask::new(mask.len(), past, q, window, flags, DType::F32, &Device::Cpu)
            .unwrap()
            .bias()
            .unwrap()
            .map(|t| t.squeeze(1).unwrap().to_vec3().unwrap())
    }

    #[test]
    fn causal_padding_and_window_masks() {
        let inf = f32::NEG_INFINITY;
        let b = bias(0, 3, None, &[vec![1, 1, 1], vec![0, 1, 1]]).unwrap();
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
        let w = bias(0, 3, Some(2), &[vec![1, 1, 1]]).unwrap();
        assert_eq!(w[0][2], vec![inf, 0.0, 0.0]);
        // One unpadded query inside the window: no mask at all.
        assert!(bias(2, 1, None, &[vec![1, 1, 1]]).is_none());
        let step = bias(2, 1, Some(2), &[vec![1, 1, 1]]).unwrap();
        assert_eq!(step[0], vec![vec![inf, 0.0, 0.0]]);
    }

    #[test]
    fn row_blocks_are_slices_of_the_whole_bias() {
        let flags = vec![0, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        let m = AttentionMask::new(2, 1, 4, Some(3), flags, DType::F32, &Device::Cpu).unwrap();
        let whole = m.bias().unwrap().unwrap();
        let block = m.bias_rows(1, 2).unwrap().unwrap();
        let want = whole.narrow(2, 1, 2).unwrap();
        assert_eq!(
            block.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let e = m.bias_rows(3, 2).err().unwrap().to_string();
        assert!(e.contains("rows 3..3+2 of 4 queries"), "{e}");
        let e = AttentionMask::new(1, 0, 2, None, vec![1], DType::F32, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("1 key flags for 1 rows of 2 keys"), "{e}");
    }
}
