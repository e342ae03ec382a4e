//! The SIMD loop of the block formats whose values are unsigned with one offset per block
//! (Q4_0: `q - 8`, Q5_0: `q - 16`): each format gives its unpacking, the loop and the two
//! integer dot products (AVX2, AVX-512 VNNI) are written once.

use std::arch::x86_64::*;

use super::{BLOCK, ROWS, Token};
use crate::simd::hsum;

/// How many blocks ahead the loop prefetches a group's quants.
const PREFETCH: usize = 64;

/// Unsigned bytes times signed bytes, summed in fours into eight 32-bit lanes, with AVX2's
/// multiply-adds (a pair of products is at most 2 * 31 * 128 for values under 32, inside the
/// 16-bit sums).
///
/// # Safety
/// AVX2 available.
#[inline(always)]
pub(crate) unsafe fn dot_avx2(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: register arithmetic; AVX2 guaranteed by the caller.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)) }
}

/// [`dot_avx2`] in one VNNI instruction.
///
/// # Safety
/// AVX-512 VNNI and VL available.
#[inline(always)]
pub(crate) unsafe fn dot_vnni(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: register arithmetic; VNNI guaranteed by the caller.
    unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b) }
}

/// The 32 values (0..16) of the block at `p`: byte `j`'s low nibble is weight `j`, its high
/// nibble weight `j + 16`.
///
/// # Safety
/// AVX2; `p` addresses 16 readable bytes.
#[inline(always)]
pub(crate) unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: `p` addresses 16 bytes (the caller's contract).
    unsafe {
        let low = _mm_set1_epi8(0x0F);
        let packed = _mm_loadu_si128(p.cast());
        let lo = _mm_and_si128(packed, low);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
        _mm256_set_m128i(hi, lo)
    }
}

/// One group's `ROWS` rows (`bytes` per row and block in `w`, steps `s`, interleaved by
/// block) dotted with `x`: per block and row, the `unpack`ed values (unsigned) times the
/// token's quants summed by `dot`, scaled by the two steps; `offset * step * Σ token quants` is
/// subtracted once per block.
///
/// # Safety
/// AVX2 and FMA (and what `dot` needs) available; `w` holds `ROWS * blocks * bytes` bytes,
/// `s` `ROWS * blocks` steps, the token `blocks` blocks; `unpack` reads at most `bytes`.
#[inline(always)]
pub(crate) unsafe fn offset_dot_rows(
    (w, bytes): (&[u8], usize),
    s: &[f32],
    x: Token<'_>,
    blocks: usize,
    offset: f32,
    unpack: impl Fn(*const u8) -> __m256i,
    dot: impl Fn(__m256i, __m256i) -> __m256i,
) -> [f32; ROWS] {
    debug_assert!(w.len() == ROWS * blocks * bytes && s.len() == ROWS * blocks);
    debug_assert!(x.quants.len() == blocks * BLOCK && x.sums.len() == blocks);
    // SAFETY: every offset is within the slices (the caller's contract); a prefetch past the
    // end is harmless (it never faults).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut offsets = [0f32; ROWS];
        for b in 0..blocks {
            let ahead = w.as_ptr().wrapping_add((b + PREFETCH) * ROWS * bytes);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            let xq = _mm256_loadu_si256(x.quants.as_ptr().add(b * BLOCK).cast());
            let dx = *x.scales.get_unchecked(b);
            let sum = *x.sums.get_unchecked(b) as f32;
            for r in 0..ROWS {
                let values = unpack(w.as_ptr().add((b * ROWS + r) * bytes));
                let lanes = dot(values, xq);
                let step = *s.get_unchecked(b * ROWS + r) * dx;
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(step), acc[r]);
                offsets[r] += step * sum;
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) - offset * offsets[r])
    }
}
