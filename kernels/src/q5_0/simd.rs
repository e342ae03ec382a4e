//! The Q5_0 dot products' SIMD bodies (AVX2, AVX-512 VNNI): the low nibbles unpacked as
//! Q4_0's, each fifth bit spread to its byte (a shuffle, an OR with every bit but one, a
//! compare), the values (0..32) multiplied by the token's signed 8-bit quants, and the offset
//! 16 taken out per block through the token block's sum.

use std::arch::x86_64::*;

use super::PACKED;
use crate::Isa;
use crate::blocks::{BLOCK, ROWS, Token};
use crate::simd::{hsum, vnni};

/// How many blocks ahead the kernels prefetch a group's quants.
const PREFETCH: usize = 64;

/// One group's `ROWS` rows (packed `w`, steps `s`, interleaved by block) dotted with `x`.
///
/// # Safety
/// `isa` at least AVX2 and available; `w` holds `ROWS * blocks * PACKED` bytes, `s`
/// `ROWS * blocks` steps, the token `blocks` blocks.
pub(super) unsafe fn dot_rows(
    isa: Isa,
    w: &[u8],
    s: &[f32],
    x: Token<'_>,
    blocks: usize,
) -> [f32; ROWS] {
    debug_assert!(w.len() == ROWS * blocks * PACKED && s.len() == ROWS * blocks);
    debug_assert!(x.quants.len() == blocks * BLOCK && x.sums.len() == blocks);
    // SAFETY: as the caller guarantees; VNNI checked here.
    unsafe {
        if isa >= Isa::Avx512 && vnni() {
            dot_rows_vnni(w, s, x, blocks)
        } else {
            dot_rows_avx2(w, s, x, blocks)
        }
    }
}

/// The 32 values (0..32) of the block at `p`.
///
/// # Safety
/// AVX2; `p` addresses `PACKED` readable bytes.
#[inline(always)]
unsafe fn unpack(p: *const u8) -> __m256i {
    // SAFETY: `p` addresses PACKED bytes (the caller's contract).
    unsafe {
        let low4 = _mm_set1_epi8(0x0F);
        let packed = _mm_loadu_si128(p.cast());
        let lo = _mm_and_si128(packed, low4);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);
        let nibbles = _mm256_set_m128i(hi, lo);
        // Byte i of the word to bytes 8i..8i+8; each byte ORed with all bits but bit (i % 8):
        // all ones exactly where that bit is set.
        let word = std::ptr::read_unaligned(p.add(16).cast::<i32>());
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(word),
            _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0x0000000000000000,
            ),
        );
        let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
        _mm256_or_si256(nibbles, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }
}

/// The loop both kernels share: per block and row, the values times the token's quants summed
/// by `$dot` into eight 32-bit lanes and scaled by the two steps; `16 * step * Σ token quants`
/// is subtracted once per block.
macro_rules! dot_rows_with {
    ($w:ident, $s:ident, $x:ident, $blocks:ident, $dot:expr) => {{
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut offset = [0f32; ROWS];
        for b in 0..$blocks {
            let ahead = $w.as_ptr().wrapping_add((b + PREFETCH) * ROWS * PACKED);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            let xq = _mm256_loadu_si256($x.quants.as_ptr().add(b * BLOCK).cast());
            let dx = *$x.scales.get_unchecked(b);
            let sum = *$x.sums.get_unchecked(b) as f32;
            for r in 0..ROWS {
                let values = unpack($w.as_ptr().add((b * ROWS + r) * PACKED));
                let lanes = $dot(values, xq);
                let step = *$s.get_unchecked(b * ROWS + r) * dx;
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(step), acc[r]);
                offset[r] += step * sum;
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) - 16.0 * offset[r])
    }};
}

/// # Safety
/// AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(w: &[u8], s: &[f32], x: Token<'_>, blocks: usize) -> [f32; ROWS] {
    // SAFETY: every offset is within the slices (`dot_rows`' contract); a pair of products
    // is at most 2 * 31 * 128, inside the 16-bit sums.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        dot_rows_with!(w, s, x, blocks, |a, b| _mm256_madd_epi16(
            _mm256_maddubs_epi16(a, b),
            ones
        ))
    }
}

/// # Safety
/// AVX-512 VNNI and VL, AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx512vnni,avx512vl,avx2,fma")]
unsafe fn dot_rows_vnni(w: &[u8], s: &[f32], x: Token<'_>, blocks: usize) -> [f32; ROWS] {
    // SAFETY: every offset is within the slices (`dot_rows`' contract).
    unsafe {
        dot_rows_with!(w, s, x, blocks, |a, b| _mm256_dpbusd_epi32(
            _mm256_setzero_si256(),
            a,
            b
        ))
    }
}
