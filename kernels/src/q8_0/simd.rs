//! The Q8_0 dot products' SIMD bodies (AVX2, AVX-512 VNNI).

use std::arch::x86_64::*;

use super::{BLOCK, ROWS};

/// How many blocks ahead the kernels prefetch a group's quants.
const PREFETCH: usize = 64;
use crate::Isa;
use crate::simd::{hsum, vnni};

/// One group's `ROWS` rows (`w` and their steps `s`, interleaved by block) dotted with one
/// token `(qx, sx)`.
///
/// # Safety
/// `isa` at least AVX2 and available; `w` holds `ROWS * blocks * BLOCK` quants, `s`
/// `ROWS * blocks` steps, the token `blocks` blocks.
pub(super) unsafe fn dot_rows(
    isa: Isa,
    w: &[i8],
    s: &[f32],
    (qx, sx): (&[i8], &[f32]),
    blocks: usize,
) -> [f32; ROWS] {
    debug_assert!(w.len() == ROWS * blocks * BLOCK && s.len() == ROWS * blocks);
    debug_assert!(qx.len() == blocks * BLOCK && sx.len() == blocks);
    // SAFETY: as the caller guarantees; VNNI checked here.
    unsafe {
        if isa >= Isa::Avx512 && vnni() {
            dot_rows_vnni(w, s, qx, sx, blocks)
        } else {
            dot_rows_avx2(w, s, qx, sx, blocks)
        }
    }
}

/// The loop both kernels share: per block, `|w|` and `x` signed like `w` (so the
/// unsigned-by-signed products are `w * x`), summed by `$dot` into eight 32-bit lanes,
/// scaled by the two steps into float accumulators.
macro_rules! dot_rows_with {
    ($w:ident, $s:ident, $qx:ident, $sx:ident, $blocks:ident, $dot:expr) => {{
        let mut acc = [_mm256_setzero_ps(); ROWS];
        for b in 0..$blocks {
            // Two lines of the block group `PREFETCH` blocks ahead (past the end is harmless:
            // a prefetch never faults).
            let ahead = $w.as_ptr().wrapping_add((b + PREFETCH) * ROWS * BLOCK);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
            let x = _mm256_loadu_si256($qx.as_ptr().add(b * BLOCK).cast());
            let dx = *$sx.get_unchecked(b);
            for r in 0..ROWS {
                let w = _mm256_loadu_si256($w.as_ptr().add((b * ROWS + r) * BLOCK).cast());
                let lanes = $dot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
                let step = _mm256_set1_ps(*$s.get_unchecked(b * ROWS + r) * dx);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), step, acc[r]);
            }
        }
        std::array::from_fn(|r| hsum(acc[r]))
    }};
}

/// # Safety
/// AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(w: &[i8], s: &[f32], qx: &[i8], sx: &[f32], blocks: usize) -> [f32; ROWS] {
    // SAFETY: every offset is within the slices (`dot_rows`' contract); a pair of
    // 8-bit products is at most 2 * 127 * 127, inside the 16-bit sums.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        dot_rows_with!(w, s, qx, sx, blocks, |a, b| _mm256_madd_epi16(
            _mm256_maddubs_epi16(a, b),
            ones
        ))
    }
}

/// # Safety
/// AVX-512 VNNI and VL, AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx512vnni,avx512vl,avx2,fma")]
unsafe fn dot_rows_vnni(w: &[i8], s: &[f32], qx: &[i8], sx: &[f32], blocks: usize) -> [f32; ROWS] {
    // SAFETY: every offset is within the slices (`dot_rows`' contract).
    unsafe {
        dot_rows_with!(w, s, qx, sx, blocks, |a, b| _mm256_dpbusd_epi32(
            _mm256_setzero_si256(),
            a,
            b
        ))
    }
}
