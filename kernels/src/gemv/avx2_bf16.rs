//! The bfloat16 matrix-vector product on AVX2, widening the weights as it reads.

use std::arch::x86_64::*;

use super::super::simd::hsum;

/// bf16 rows: 16 weights per 256-bit load, widened in-lane by interleaving with zeros
/// (`unpacklo/hi_epi16`), which yields weights `0-3, 8-11` and `4-7, 12-15` of each block of
/// 16; `x` is permuted the same way once per call, so no cross-lane shuffle is needed.
///
/// # Safety
/// AVX2 and FMA available; `w.len() == y.len() * x.len()`; `w` holds bf16 bit patterns.
#[target_feature(enable = "avx2,fma")]
pub(in super::super) unsafe fn gemv_rows_bf16(w: &[u16], x: &[f32], y: &mut [f32]) {
    let k = x.len();
    let k16 = k / 16 * 16;
    let mut xp = vec![0f32; k16];
    for b in (0..k16).step_by(16) {
        for j in 0..4 {
            xp[b + j] = x[b + j];
            xp[b + 4 + j] = x[b + 8 + j];
            xp[b + 8 + j] = x[b + 4 + j];
            xp[b + 12 + j] = x[b + 12 + j];
        }
    }
    for r in 0..y.len() {
        // SAFETY: row r exists; AVX2/FMA as guaranteed by the caller.
        unsafe { row_bf16(w, k, &xp, x, r, y) };
    }
}

/// Row `r`, read front to back as one stream. One row at a time is the fastest order for
/// bf16 weights: rows are 2 KB at the bench shapes, and with four or eight rows in flight
/// the hardware prefetcher followed as many short streams (`--only kernels`, same session:
/// one row 26.9 GB/s read, two 21.4, four 21.7, eight 19.2). Four accumulators hide the
/// FMA latency.
///
/// # Safety
/// AVX2 and FMA available; row `r` of `w` (`k` long) and `y[r]` exist; `xp` is `x`
/// permuted as in [`gemv_rows_bf16`], `k / 16 * 16` long.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn row_bf16(w: &[u16], k: usize, xp: &[f32], x: &[f32], r: usize, y: &mut [f32]) {
    let k16 = xp.len();
    let k32 = k16 / 32 * 32;
    let widen = |v: u16| f32::from_bits((v as u32) << 16);
    // SAFETY: vector loads read 16 u16 at offsets < k16 <= k of row r (which the caller
    // guarantees exists) and 8 floats of `xp` below k16.
    unsafe {
        let p = w.as_ptr().add(r * k);
        let xpp = xp.as_ptr();
        let zero = _mm256_setzero_si256();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < k32 {
            let v0 = _mm256_loadu_si256(p.add(i) as *const __m256i);
            let v1 = _mm256_loadu_si256(p.add(i + 16) as *const __m256i);
            let lo0 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v0));
            let hi0 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v0));
            let lo1 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v1));
            let hi1 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v1));
            acc[0] = _mm256_fmadd_ps(lo0, _mm256_loadu_ps(xpp.add(i)), acc[0]);
            acc[1] = _mm256_fmadd_ps(hi0, _mm256_loadu_ps(xpp.add(i + 8)), acc[1]);
            acc[2] = _mm256_fmadd_ps(lo1, _mm256_loadu_ps(xpp.add(i + 16)), acc[2]);
            acc[3] = _mm256_fmadd_ps(hi1, _mm256_loadu_ps(xpp.add(i + 24)), acc[3]);
            i += 32;
        }
        if i < k16 {
            let v = _mm256_loadu_si256(p.add(i) as *const __m256i);
            let lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v));
            let hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v));
            acc[0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xpp.add(i)), acc[0]);
            acc[1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xpp.add(i + 8)), acc[1]);
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(sum);
        for (t, &xt) in x.iter().enumerate().skip(k16) {
            s += widen(*p.add(t)) * xt;
        }
        y[r] = s;
    }
}
