//! The Q6_K dot products' SIMD bodies (AVX2; compiled again for AVX-512 without VNNI, where VNNI
//! runs the tile, `tile.rs`): each chunk's 16 bytes of low nibbles and 8 bytes of high bit pairs
//! unpacked to 32 values (0..64),
//! multiplied by the token's signed 8-bit quants in 16-bit pair sums, the halves' scales
//! folded into the 32-bit multiply-add; the offset 32 taken out with the token's half sums.

use std::arch::x86_64::*;

use super::{CHUNK, CHUNKS, PAIRS};
use crate::Isa;
use crate::blocks::{BLOCK, ROWS, Token};
use crate::simd::hsum;

/// How many chunks ahead the kernels prefetch a group's quants.
const PREFETCH: usize = 32;

/// One group's `ROWS` rows (quants, scales, steps: [`super::Q6KMatrix`]'s layout) dotted with
/// `x`.
///
/// # Safety
/// `isa` at least AVX2 and available; the slices hold one group of `x.scales.len()` chunks.
pub(super) unsafe fn dot_rows(
    isa: Isa,
    (w, sc, d): (&[u8], &[i8], &[f32]),
    x: Token<'_>,
) -> [f32; ROWS] {
    let chunks = x.scales.len();
    debug_assert!(w.len() == ROWS * chunks * CHUNK && sc.len() == 2 * ROWS * chunks);
    debug_assert!(d.len() == ROWS * chunks / CHUNKS && x.half_sums.len() == 2 * chunks);
    // SAFETY: as the caller guarantees.
    unsafe {
        if isa >= Isa::Avx512 {
            dot_rows_avx512(w, sc, d, x, chunks)
        } else {
            dot_rows_avx2(w, sc, d, x, chunks)
        }
    }
}

/// The 32 values (0..64) of a row's chunk: its 16 bytes of nibbles at `nibbles`, its 8 bytes
/// of bit pairs at `pairs`.
///
/// # Safety
/// AVX2; `nibbles` addresses 16 readable bytes, `pairs` 8.
#[inline(always)]
unsafe fn unpack(nibbles: *const u8, pairs: *const u8) -> __m256i {
    // SAFETY: the pointers address 16 and 8 bytes (the caller's contract).
    unsafe {
        let low4 = _mm_set1_epi8(0x0F);
        let packed = _mm_loadu_si128(nibbles.cast());
        let lo = _mm_and_si128(packed, low4);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);
        let nibbles = _mm256_set_m128i(hi, lo);
        // The 8 bytes of bit pairs in each 64-bit lane, lane k shifted by 2k: byte j of lane k
        // then holds the pair of weight j + 8k in its bits 0 and 1.
        let pairs = _mm256_set1_epi64x(std::ptr::read_unaligned(pairs.cast::<i64>()));
        let pairs = _mm256_srlv_epi64(pairs, _mm256_set_epi64x(6, 4, 2, 0));
        let high = _mm256_and_si256(pairs, _mm256_set1_epi8(3));
        _mm256_or_si256(nibbles, _mm256_slli_epi16(high, 4))
    }
}

/// The loop both kernels share: per chunk and row, the values (0..64, unsigned) times the
/// token's quants in 16-bit pair sums (at most 2 * 63 * 128), multiplied by the halves' scales
/// in the 32-bit multiply-add (lanes 0..4 the first half, 4..8 the second), scaled by the two
/// steps; `32 * step * Σ scale * half sum` is subtracted once per chunk.
macro_rules! dot_rows_with {
    ($w:ident, $sc:ident, $d:ident, $x:ident, $chunks:ident) => {{
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut offset = [0f32; ROWS];
        for c in 0..$chunks {
            let chunk = $w.as_ptr().add(c * ROWS * CHUNK);
            _mm_prefetch::<_MM_HINT_T0>(chunk.wrapping_add(PREFETCH * ROWS * CHUNK).cast());
            let xq = _mm256_loadu_si256($x.quants.as_ptr().add(c * BLOCK).cast());
            let dx = *$x.scales.get_unchecked(c);
            let (h0, h1) = (
                *$x.half_sums.get_unchecked(2 * c),
                *$x.half_sums.get_unchecked(2 * c + 1),
            );
            for r in 0..ROWS {
                let values = unpack(chunk.add(16 * r), chunk.add(PAIRS + 8 * r));
                let (s0, s1) = (
                    *$sc.get_unchecked(c * 2 * ROWS + r),
                    *$sc.get_unchecked(c * 2 * ROWS + ROWS + r),
                );
                let scales =
                    _mm256_setr_m128i(_mm_set1_epi16(s0 as i16), _mm_set1_epi16(s1 as i16));
                let lanes = _mm256_madd_epi16(_mm256_maddubs_epi16(values, xq), scales);
                let step = *$d.get_unchecked((c / CHUNKS) * ROWS + r) * dx;
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(step), acc[r]);
                offset[r] += step * (s0 as i32 * h0 + s1 as i32 * h1) as f32;
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) - 32.0 * offset[r])
    }};
}

/// # Safety
/// AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(
    w: &[u8],
    sc: &[i8],
    d: &[f32],
    x: Token<'_>,
    chunks: usize,
) -> [f32; ROWS] {
    // SAFETY: every offset is within the slices (`dot_rows`' contract); a pair of products is
    // at most 2 * 63 * 128, inside the 16-bit sums, and a scaled pair 127 times that, inside
    // the 32-bit sums.
    unsafe { dot_rows_with!(w, sc, d, x, chunks) }
}

/// The same loop compiled for AVX-512, whose wider register file and encodings the
/// compiler may use; the products stay AVX2's, where the per-half scales fold in for free.
///
/// # Safety
/// AVX-512F, AVX2 and FMA (`Isa::Avx512` promises no more: no VL); slices as [`dot_rows`]
/// requires.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dot_rows_avx512(
    w: &[u8],
    sc: &[i8],
    d: &[f32],
    x: Token<'_>,
    chunks: usize,
) -> [f32; ROWS] {
    // SAFETY: as `dot_rows_avx2`.
    unsafe { dot_rows_with!(w, sc, d, x, chunks) }
}
