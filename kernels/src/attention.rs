//! Scaled dot-product attention of the new queries over a KV cache, on slices: grouped-query
//! attention reads each key/value head in place for all the query heads that share it (no
//! copies per group), masked keys are skipped (the mask is read as a description, never as a
//! `queries x keys` buffer), and each (row, head) pair is one task on the kernel threads.

use std::sync::Mutex;

use super::activation::exp_in_place;
use super::{Isa, pool};

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Rows of the batch.
    pub batch: usize,
    /// New queries per row.
    pub q_len: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`; consecutive query heads share one).
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Keys attended over (cached positions, the new ones included).
    pub kv_len: usize,
    /// Positions the key/value buffers hold per head (`>= kv_len`).
    pub kv_capacity: usize,
}

/// Which keys a query sees (see `patchwork_models::ops::AttentionMask`): query `t` sits at position
/// `past + t`; it sees the real keys (`key_mask`, `batch x kv_len`, 1 = real, read only when
/// `padded`) that are not after it and less than `window` behind it; a padding query sees
/// itself only.
#[derive(Clone, Copy, Debug)]
pub struct MaskView<'a> {
    /// Positions before the first query.
    pub past: usize,
    /// Sliding window (`usize::MAX`: none).
    pub window: usize,
    /// Key flags, `batch x kv_len`.
    pub key_mask: &'a [u8],
    /// Whether any flag is 0.
    pub padded: bool,
}

/// The keys query `t` of row `b` reads: `lo..end`, the flags to skip padding keys by.
struct Visible<'a> {
    lo: usize,
    end: usize,
    flags: Option<&'a [u8]>,
}

impl<'a> MaskView<'a> {
    fn keys(&self, b: usize, t: usize, kv_len: usize) -> Visible<'a> {
        let q = self.past + t;
        let flags = &self.key_mask[b * kv_len..(b + 1) * kv_len];
        if self.padded && flags[q] == 0 {
            return Visible {
                lo: q,
                end: q + 1,
                flags: None,
            };
        }
        Visible {
            lo: (q + 1).saturating_sub(self.window),
            end: q + 1,
            flags: self.padded.then_some(flags),
        }
    }
}

/// `out = softmax(q k^T * scale + mask) v` for every row, query and head; without a mask,
/// every query sees all `kv_len` keys.
///
/// Layouts: `q` and `out` `[batch, q_len, heads, head_dim]` (the projections' natural
/// layout), `k` and `v` `[batch, kv_heads, kv_capacity, head_dim]` (the cache; the first
/// `kv_len` positions are read).
///
/// # Panics
/// If a slice is shorter than its layout, `kv_heads` does not divide `heads`, or the mask's
/// queries do not end at `kv_len`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    isa: Isa,
    s: &AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<MaskView<'_>>,
    scale: f32,
    out: &mut [f32],
) {
    let d = s.head_dim;
    assert!(
        s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads),
        "attention: heads"
    );
    assert!(s.kv_len <= s.kv_capacity, "attention: kv_len > capacity");
    assert_eq!(q.len(), s.batch * s.q_len * s.heads * d, "attention: q");
    assert_eq!(out.len(), q.len(), "attention: out");
    assert!(
        k.len() >= s.batch * s.kv_heads * s.kv_capacity * d,
        "attention: k"
    );
    assert!(
        v.len() >= s.batch * s.kv_heads * s.kv_capacity * d,
        "attention: v"
    );
    if let Some(m) = &mask {
        assert_eq!(m.key_mask.len(), s.batch * s.kv_len, "attention: key mask");
        assert_eq!(m.past + s.q_len, s.kv_len, "attention: mask positions");
    }
    let task = |bh: usize| -> Vec<f32> {
        let (b, h) = (bh / s.heads, bh % s.heads);
        let g = h / (s.heads / s.kv_heads);
        let base = (b * s.kv_heads + g) * s.kv_capacity * d;
        let keys = &k[base..base + s.kv_len * d];
        let values = &v[base..base + s.kv_len * d];
        let mut result = vec![0f32; s.q_len * d];
        let mut scores = vec![0f32; s.kv_len];
        for t in 0..s.q_len {
            let qrow = &q[((b * s.q_len + t) * s.heads + h) * d..][..d];
            let visible = match &mask {
                Some(m) => m.keys(b, t, s.kv_len),
                None => Visible {
                    lo: 0,
                    end: s.kv_len,
                    flags: None,
                },
            };
            let orow = &mut result[t * d..(t + 1) * d];
            head(isa, qrow, keys, values, &visible, scale, &mut scores, orow);
        }
        result
    };
    let tasks = s.batch * s.heads;
    let results: Vec<Vec<f32>> = if tasks * s.q_len * s.kv_len * d >= 1 << 14 {
        let slots: Vec<Mutex<Vec<f32>>> = (0..tasks).map(|_| Mutex::new(Vec::new())).collect();
        pool::parallel_for(tasks, |i| {
            let r = task(i);
            *slots[i]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = r;
        });
        slots
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            })
            .collect()
    } else {
        (0..tasks).map(task).collect()
    };
    for (bh, r) in results.iter().enumerate() {
        let (b, h) = (bh / s.heads, bh % s.heads);
        for t in 0..s.q_len {
            out[((b * s.q_len + t) * s.heads + h) * d..][..d].copy_from_slice(&r[t * d..][..d]);
        }
    }
}

/// One query row of one head.
#[allow(clippy::too_many_arguments)]
fn head(
    isa: Isa,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    visible: &Visible<'_>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    match isa.capped(Isa::Avx512) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            // SAFETY: AVX-512F was detected.
            unsafe { head_avx512(q, keys, values, visible, scale, scores, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            // SAFETY: AVX2 and FMA were detected.
            unsafe { head_avx2(q, keys, values, visible, scale, scores, out) }
        }
        _ => head_generic(Isa::Portable, q, keys, values, visible, scale, scores, out),
    }
}

/// [`head_generic`] compiled with AVX2 and FMA enabled (the loops vectorise 8 wide).
///
/// # Safety
/// AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn head_avx2(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    visible: &Visible<'_>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    head_generic(Isa::Avx2Fma, q, keys, values, visible, scale, scores, out)
}

/// [`head_generic`] compiled with AVX-512F enabled (the loops vectorise 16 wide).
///
/// # Safety
/// AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn head_avx512(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    visible: &Visible<'_>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    head_generic(Isa::Avx512, q, keys, values, visible, scale, scores, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn head_generic(
    isa: Isa,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    visible: &Visible<'_>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    let (lo, end) = (visible.lo, visible.end.min(scores.len()));
    let scores = &mut scores[lo.min(end)..end];
    let mut max = f32::NEG_INFINITY;
    for (i, score) in scores.iter_mut().enumerate() {
        let s = lo + i;
        *score = if visible.flags.is_some_and(|f| f[s] == 0) {
            f32::NEG_INFINITY
        } else {
            dot(q, &keys[s * d..(s + 1) * d]) * scale
        };
        max = max.max(*score);
    }
    if max == f32::NEG_INFINITY {
        // Every key masked: softmax of all -inf is NaN, as the reference computes it.
        out.fill(f32::NAN);
        return;
    }
    for score in scores.iter_mut() {
        *score -= max;
    }
    exp_in_place(isa, scores);
    let sum: f32 = scores.iter().sum();
    out.fill(0.0);
    for (i, &p) in scores.iter().enumerate() {
        if p != 0.0 {
            let s = lo + i;
            axpy(out, p, &values[s * d..(s + 1) * d]);
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Sixteen lanes: one AVX-512 register, or two AVX2 ones.
    let mut acc = [0f32; 16];
    let mut ac = a.chunks_exact(16);
    let mut bc = b.chunks_exact(16);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
        s += x * y;
    }
    s
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::{close, random};

    #[test]
    fn attention_matches_a_float64_reference_with_gqa_cache_and_mask() {
        for isa in crate::tests_support::paths() {
            for (batch, q_len, heads, kv_heads, d, kv_len, cap) in [
                (1, 1, 4, 2, 8, 5, 9),
                (2, 3, 6, 3, 12, 7, 7),
                (1, 6, 4, 1, 17, 6, 10),
                (2, 1, 2, 2, 64, 70, 80),
            ] {
                let s = AttentionShape {
                    batch,
                    q_len,
                    heads,
                    kv_heads,
                    head_dim: d,
                    kv_len,
                    kv_capacity: cap,
                };
                let q = random(batch * q_len * heads * d, 1);
                let k = random(batch * kv_heads * cap * d, 2);
                let v = random(batch * kv_heads * cap * d, 3);
                // Causal over the last q_len positions, a window of 5 on every other shape,
                // and key 0 of row 1 padding.
                let window = if q_len % 2 == 0 { 5 } else { usize::MAX };
                let mut key_mask = vec![1u8; batch * kv_len];
                if batch > 1 {
                    key_mask[kv_len] = 0;
                }
                let past = kv_len - q_len;
                let view = MaskView {
                    past,
                    window,
                    key_mask: &key_mask,
                    padded: batch > 1,
                };
                let visible = |b: usize, t: usize, j: usize| {
                    let pos = past + t;
                    if key_mask[b * kv_len + pos] == 0 {
                        return j == pos;
                    }
                    j <= pos && key_mask[b * kv_len + j] != 0 && pos - j < window
                };
                let scale = 0.3;
                let mut out = vec![f32::NAN; q.len()];
                attention(isa, &s, &q, &k, &v, Some(view), scale, &mut out);
                let mut want = vec![0f64; q.len()];
                for b in 0..batch {
                    for t in 0..q_len {
                        for h in 0..heads {
                            let g = h / (heads / kv_heads);
                            let qo = ((b * q_len + t) * heads + h) * d;
                            let ko = (b * kv_heads + g) * cap * d;
                            let sc: Vec<f64> = (0..kv_len)
                                .map(|j| {
                                    let dotp: f64 = (0..d)
                                        .map(|i| q[qo + i] as f64 * k[ko + j * d + i] as f64)
                                        .sum();
                                    if visible(b, t, j) {
                                        dotp * scale as f64
                                    } else {
                                        f64::NEG_INFINITY
                                    }
                                })
                                .collect();
                            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                            let z: f64 = e.iter().sum();
                            for i in 0..d {
                                want[qo + i] = (0..kv_len)
                                    .map(|j| e[j] / z * v[ko + j * d + i] as f64)
                                    .sum();
                            }
                        }
                    }
                }
                close(&out, &want, &format!("{isa:?} {s:?}"));
            }
        }
    }
}
