//! What the block formats' AVX2 bodies share: the row loop of the formats whose values are
//! unsigned with one offset per block (Q4_0: `q - 8`, Q5_0: `q - 16`; each format gives its
//! unpacking), the byte dot product, the nibble unpacking, and the tokens' quantization. On
//! AVX-512 VNNI these formats run the integer tiles ([`super::tile`]) instead.

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

/// One group's `ROWS` rows (`bytes` per row and block in `w`, the group's rows of a block
/// together, steps `s` interleaved by block) dotted with `x`: per block and row, the values
/// (unsigned) that `unpack(block, row)` reads times the token's quants summed by `dot`, scaled
/// by the two steps; `offset(b * ROWS + r) * token step * Σ token quants` is subtracted once
/// per block and row (the weights' offset in weight units: `8 * step` for Q4_0, `-min` for
/// Q4_1).
///
/// # Safety
/// AVX2 and FMA (and what `dot` needs) available; `w` holds `ROWS * blocks * bytes` bytes,
/// `s` `ROWS * blocks` steps, the token `blocks` blocks; `unpack` reads within the
/// `ROWS * bytes` bytes of the block it is given.
#[inline(always)]
pub(crate) unsafe fn offset_dot_rows(
    (w, bytes): (&[u8], usize),
    s: &[f32],
    x: Token<'_>,
    blocks: usize,
    offset: impl Fn(usize) -> f32,
    unpack: impl Fn(*const u8, usize) -> __m256i,
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
            let block = w.as_ptr().add(b * ROWS * bytes);
            for r in 0..ROWS {
                let values = unpack(block, r);
                let lanes = dot(values, xq);
                let step = *s.get_unchecked(b * ROWS + r) * dx;
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(step), acc[r]);
                offsets[r] += offset(b * ROWS + r) * dx * sum;
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) - offsets[r])
    }
}

/// [`super::quantize_block`] in AVX2, with the sums of the two halves' quants: the same step
/// and quants (halves rounded away from zero by truncation, the step from
/// [`super::block_step`]), in registers. A plain function without closures: inlined into its
/// `target_feature` callers, its intrinsics become instructions (a closure written in it
/// would take no target features and stay a call).
///
/// # Safety
/// AVX2 available; `values` and `quants` hold [`BLOCK`] values.
#[inline(always)]
pub(crate) unsafe fn quantize_block(values: &[f32], quants: &mut [i8]) -> (f32, [i32; 2]) {
    debug_assert!(values.len() == BLOCK && quants.len() == BLOCK);
    // SAFETY: 32 values are read and 32 quants written (the caller's contract).
    unsafe {
        let p = values.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let mut amax = _mm256_setzero_ps();
        let mut unordered = _mm256_setzero_ps();
        for v in v {
            amax = _mm256_max_ps(amax, _mm256_and_ps(v, abs_mask));
            unordered = _mm256_or_ps(unordered, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        }
        if _mm256_movemask_ps(unordered) != 0 {
            quants.fill(0);
            return (f32::NAN, [0, 0]);
        }
        let Some((d, inv)) = super::block_step(hmax(amax), true) else {
            quants.fill(0);
            return (f32::NAN, [0, 0]);
        };
        let inv = _mm256_set1_ps(inv);
        let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
        let sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
        let mut q = [_mm256_setzero_si256(); 4];
        for (q, v) in q.iter_mut().zip(v) {
            let x = _mm256_mul_ps(v, inv);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
            let fraction = _mm256_and_ps(_mm256_sub_ps(x, t), abs_mask);
            let away = _mm256_cmp_ps::<_CMP_GE_OQ>(fraction, half);
            let step = _mm256_or_ps(_mm256_and_ps(x, sign_mask), one);
            *q = _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(away, step)));
        }
        // i32 -> i16 -> i8 packs interleave 128-bit lanes; the permute puts them back in order.
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let ordered = _mm256_permutevar8x32_epi32(packed, order);
        _mm256_storeu_si256(quants.as_mut_ptr().cast(), ordered);
        (
            d,
            [
                hsum_i32(_mm256_add_epi32(q[0], q[1])),
                hsum_i32(_mm256_add_epi32(q[2], q[3])),
            ],
        )
    }
}

/// The sum of the 8 lanes.
///
/// # Safety
/// AVX2 available.
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    // SAFETY: register arithmetic only; AVX2 guaranteed by the caller.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)))
    }
}

/// The largest of the 8 lanes (none NaN).
///
/// # Safety
/// AVX2 available.
#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: register arithmetic only; AVX2 guaranteed by the caller.
    unsafe {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m)))
    }
}
