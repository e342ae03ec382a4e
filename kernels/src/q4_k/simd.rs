//! The Q4_K dot products' SIMD body (AVX2, compiled again for AVX-512 without VNNI; AVX-512
//! VNNI runs the integer tile, `tile.rs`, for any number of tokens): per block, the 4 rows'
//! steps (`d * scale * token step`) in one vector and the mins' share (`dmin * min * token step *
//! Σ token quants`) accumulated in another; each row's 16 bytes unpacked to 32 nibbles and
//! multiplied by the token's signed 8-bit quants in AVX2's multiply-adds.

use std::arch::x86_64::*;

use super::{PACKED, SUBS};
use crate::Isa;
use crate::blocks::simd::{dot_avx2, nibbles};
use crate::blocks::{BLOCK, ROWS, Token};
use crate::simd::hsum;

/// How many blocks ahead the loop prefetches a group's quants.
const PREFETCH: usize = 64;

/// One group's `ROWS` rows (quants, scales and mins, steps: [`super::Q4KMatrix`]'s layout)
/// dotted with `x`.
///
/// # Safety
/// `isa` at least AVX2 and available; the slices hold one group of `x.scales.len()` blocks.
pub(super) unsafe fn dot_rows(
    isa: Isa,
    (w, subs, steps): (&[u8], &[u8], &[f32]),
    x: Token<'_>,
) -> [f32; ROWS] {
    let blocks = x.scales.len();
    debug_assert!(w.len() == blocks * ROWS * PACKED && subs.len() == blocks * 2 * ROWS);
    debug_assert!(steps.len() == blocks / SUBS * 2 * ROWS && x.quants.len() == blocks * BLOCK);
    // SAFETY: as the caller guarantees.
    unsafe {
        if isa >= Isa::Avx512 {
            dot_rows_avx512(w, subs, steps, x)
        } else {
            dot_rows_avx2(w, subs, steps, x)
        }
    }
}

/// Four bytes at `p` widened to floats.
///
/// # Safety
/// AVX2; `p` addresses 4 readable bytes.
#[inline(always)]
unsafe fn bytes_to_f32(p: *const u8) -> __m128 {
    // SAFETY: `p` addresses 4 bytes (the caller's contract).
    unsafe {
        let word = std::ptr::read_unaligned(p.cast::<i32>());
        _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(word)))
    }
}

/// The loop both compilations share.
///
/// # Safety
/// AVX2 and FMA available; slices as [`dot_rows`] requires.
#[inline(always)]
unsafe fn dot_rows_with(w: &[u8], subs: &[u8], steps: &[f32], x: Token<'_>) -> [f32; ROWS] {
    // SAFETY: every offset is within the slices (the caller's contract); a prefetch past the
    // end is harmless (it never faults). A pair of products is at most 2 * 15 * 128, inside
    // the 16-bit sums.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut mins = _mm_setzero_ps();
        let mut row_steps = [0f32; ROWS];
        for b in 0..x.scales.len() {
            let ahead = w.as_ptr().wrapping_add((b + PREFETCH) * ROWS * PACKED);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            let s = (b / SUBS) * 2 * ROWS;
            let d = _mm_loadu_ps(steps.as_ptr().add(s));
            let dmin = _mm_loadu_ps(steps.as_ptr().add(s + ROWS));
            let dx = *x.scales.get_unchecked(b);
            let share = dx * *x.sums.get_unchecked(b) as f32;
            let scales = bytes_to_f32(subs.as_ptr().add(b * 2 * ROWS));
            let row_mins = bytes_to_f32(subs.as_ptr().add(b * 2 * ROWS + ROWS));
            let step = _mm_mul_ps(_mm_mul_ps(scales, d), _mm_set1_ps(dx));
            _mm_storeu_ps(row_steps.as_mut_ptr(), step);
            mins = _mm_fmadd_ps(_mm_mul_ps(row_mins, dmin), _mm_set1_ps(share), mins);
            let xq = _mm256_loadu_si256(x.quants.as_ptr().add(b * BLOCK).cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                let values = nibbles(w.as_ptr().add((b * ROWS + r) * PACKED));
                let lanes = _mm256_cvtepi32_ps(dot_avx2(values, xq));
                *acc = _mm256_fmadd_ps(lanes, _mm256_set1_ps(row_steps[r]), *acc);
            }
        }
        let mut row_mins = [0f32; ROWS];
        _mm_storeu_ps(row_mins.as_mut_ptr(), mins);
        std::array::from_fn(|r| hsum(acc[r]) - row_mins[r])
    }
}

/// # Safety
/// AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(w: &[u8], subs: &[u8], steps: &[f32], x: Token<'_>) -> [f32; ROWS] {
    // SAFETY: `dot_rows`' contract; AVX2 and FMA enabled here.
    unsafe { dot_rows_with(w, subs, steps, x) }
}

/// # Safety
/// AVX-512F, AVX2 and FMA (`Isa::Avx512` promises no more: no VL); slices as [`dot_rows`]
/// requires.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dot_rows_avx512(w: &[u8], subs: &[u8], steps: &[f32], x: Token<'_>) -> [f32; ROWS] {
    // SAFETY: `dot_rows`' contract; AVX-512F, AVX2 and FMA enabled here.
    unsafe { dot_rows_with(w, subs, steps, x) }
}
