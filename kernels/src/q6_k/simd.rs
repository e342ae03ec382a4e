//! The Q6_K dot products' SIMD bodies (AVX2; compiled again for AVX-512): each chunk's 16
//! bytes of low nibbles and 8 bytes of high bit pairs unpacked to 32 values (0..64),
//! multiplied by the token's signed 8-bit quants in 16-bit pair sums, the halves' scales
//! folded into the 32-bit multiply-add; the offset 32 taken out with the token's half sums.

use std::arch::x86_64::*;

use super::CHUNK;
use crate::Isa;
use crate::blocks::{BLOCK, ROWS, Token};
use crate::simd::hsum;

/// How many chunks ahead the kernels prefetch a group's quants.
const PREFETCH: usize = 32;

/// One group's `ROWS` rows (chunks `w`, half scales `sc`, steps `d`, interleaved by chunk)
/// dotted with `x`.
///
/// # Safety
/// `isa` at least AVX2 and available; `w` holds `ROWS * chunks * CHUNK` bytes, `sc`
/// `2 * ROWS * chunks` scales, `d` `ROWS * chunks` steps, the token `chunks` blocks.
pub(super) unsafe fn dot_rows(
    isa: Isa,
    w: &[u8],
    sc: &[i8],
    d: &[f32],
    x: Token<'_>,
    chunks: usize,
) -> [f32; ROWS] {
    debug_assert!(w.len() == ROWS * chunks * CHUNK && sc.len() == 2 * ROWS * chunks);
    debug_assert!(d.len() == ROWS * chunks && x.half_sums.len() == 2 * chunks);
    // SAFETY: as the caller guarantees; VNNI checked here.
    unsafe {
        if isa >= Isa::Avx512 {
            dot_rows_avx512(w, sc, d, x, chunks)
        } else {
            dot_rows_avx2(w, sc, d, x, chunks)
        }
    }
}

/// The 32 values (0..64) of the chunk at `p`, in weight order.
///
/// # Safety
/// AVX2; `p` addresses `CHUNK` readable bytes.
#[inline(always)]
unsafe fn unpack(p: *const u8) -> __m256i {
    // SAFETY: `p` addresses CHUNK bytes (the caller's contract).
    unsafe {
        let low4 = _mm_set1_epi8(0x0F);
        let packed = _mm_loadu_si128(p.cast());
        let lo = _mm_and_si128(packed, low4);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);
        let nibbles = _mm256_set_m128i(hi, lo);
        // The 8 bytes of bit pairs in each 64-bit lane, lane k shifted by 2k: byte j of lane k
        // then holds the pair of weight j + 8k in its bits 0 and 1.
        let pairs = _mm256_set1_epi64x(std::ptr::read_unaligned(p.add(16).cast::<i64>()));
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
        // Byte 0 of a 16-bit word to lanes 0..8, byte 1 to lanes 8..16.
        let spread = _mm_set_epi8(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut offset = [0f32; ROWS];
        for c in 0..$chunks {
            let ahead = $w.as_ptr().wrapping_add((c + PREFETCH) * ROWS * CHUNK);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            let xq = _mm256_loadu_si256($x.quants.as_ptr().add(c * BLOCK).cast());
            let dx = *$x.scales.get_unchecked(c);
            let (h0, h1) = (
                *$x.half_sums.get_unchecked(2 * c),
                *$x.half_sums.get_unchecked(2 * c + 1),
            );
            for r in 0..ROWS {
                let at = c * ROWS + r;
                let values = unpack($w.as_ptr().add(at * CHUNK));
                let pair = std::ptr::read_unaligned($sc.as_ptr().add(2 * at).cast::<u16>());
                let scales =
                    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(_mm_cvtsi32_si128(pair as i32), spread));
                let lanes = _mm256_madd_epi16(_mm256_maddubs_epi16(values, xq), scales);
                let step = *$d.get_unchecked(at) * dx;
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(step), acc[r]);
                let (s0, s1) = (
                    *$sc.get_unchecked(2 * at) as i32,
                    *$sc.get_unchecked(2 * at + 1) as i32,
                );
                offset[r] += step * (s0 * h0 + s1 * h1) as f32;
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

/// The same loop compiled for AVX-512 (VL), whose wider register file and encodings the
/// compiler may use; the products stay AVX2's, where the per-half scales fold in for free.
///
/// # Safety
/// AVX-512F and VL, AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
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
