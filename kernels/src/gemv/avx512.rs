//! The matrix-vector products on AVX-512: four float32 streams, or bfloat16 widened 16 at a time.

use std::arch::x86_64::*;

/// Rows processed together (f32): four streams, each FMA'd with the same `x` loads.
const R: usize = 4;
/// How far ahead of the loads the kernels prefetch, in bytes.
const AHEAD: usize = 1024;

/// # Safety
/// AVX-512F available; `w.len() == y.len() * x.len()`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn gemv_rows(w: &[f32], x: &[f32], y: &mut [f32]) {
    let k = x.len();
    let rows = y.len();
    let k16 = k / 16 * 16;
    let mut r = 0;
    while r < rows {
        let n = R.min(rows - r);
        // SAFETY: rows r..r + n exist, each k long; vector loads read below k16 <= k of a
        // row or of x; prefetches never fault.
        unsafe {
            let p: [*const f32; R] =
                std::array::from_fn(|j| w.as_ptr().add((r + j.min(n - 1)) * k));
            let mut acc = [_mm512_setzero_ps(); R];
            let mut i = 0;
            while i < k16 {
                let xv = _mm512_loadu_ps(x.as_ptr().add(i));
                for j in 0..R {
                    _mm_prefetch::<_MM_HINT_T0>(p[j].add(i).cast::<i8>().wrapping_add(AHEAD));
                    acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(p[j].add(i)), xv, acc[j]);
                }
                i += 16;
            }
            for (j, a) in acc.iter().enumerate().take(n) {
                let mut s = _mm512_reduce_add_ps(*a);
                for t in k16..k {
                    s += *p[j].add(t) * *x.get_unchecked(t);
                }
                *y.get_unchecked_mut(r + j) = s;
            }
        }
        r += n;
    }
}

/// bf16 rows, one at a time front to back (one stream), 16 weights widened per 256-bit
/// load (`cvtepu16_epi32` then a shift into the high half).
///
/// # Safety
/// AVX-512F available; `w.len() == y.len() * x.len()`; `w` holds bf16 bit patterns.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn gemv_rows_bf16(w: &[u16], x: &[f32], y: &mut [f32]) {
    let k = x.len();
    let k32 = k / 32 * 32;
    let widen = |v: u16| f32::from_bits((v as u32) << 16);
    for (r, out) in y.iter_mut().enumerate() {
        // SAFETY: row r exists (k long); vector loads read below k32 <= k of the row or of
        // x; prefetches never fault.
        unsafe {
            let p = w.as_ptr().add(r * k);
            let load = |i: usize| {
                let v = _mm256_loadu_si256(p.add(i).cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
            };
            let mut acc = [_mm512_setzero_ps(); 2];
            let mut i = 0;
            while i < k32 {
                _mm_prefetch::<_MM_HINT_T0>(p.add(i).cast::<i8>().wrapping_add(AHEAD));
                acc[0] = _mm512_fmadd_ps(load(i), _mm512_loadu_ps(x.as_ptr().add(i)), acc[0]);
                acc[1] = _mm512_fmadd_ps(
                    load(i + 16),
                    _mm512_loadu_ps(x.as_ptr().add(i + 16)),
                    acc[1],
                );
                i += 32;
            }
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
            for (t, &xt) in x.iter().enumerate().skip(k32) {
                s += widen(*p.add(t)) * xt;
            }
            *out = s;
        }
    }
}
