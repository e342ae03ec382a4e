//! The Q6_K integer tile (AVX-512 VNNI): one group's 4 rows times up to [`crate::blocks::TILE`] tokens, each
//! chunk's 96 bytes unpacked once for all the tokens. As the 4-bit tile
//! ([`crate::blocks::tile`]), a 512-bit register holds the 4 rows side by side, one 128-bit lane
//! per row: the low nibbles (weights 0..16) in one, the high ones (16..32) in another, and each
//! row's 8 bytes of bit pairs, doubled across its lane and shifted per 64-bit half, give the
//! fifth and sixth bits. The halves have scales of their own, so each token block takes two
//! sums (each started at `-32 *` its half's token sum, the offset) scaled separately.

use std::arch::x86_64::*;

use super::{CHUNK, CHUNKS, PAIRS};
use crate::blocks::tile::{by_count, spread};
use crate::blocks::{BLOCK, ROWS, TileTokens};

/// How many chunks ahead the tile prefetches a group's quants.
const PREFETCH: usize = 8;

/// Group rows (quants, scales, steps: [`super::Q6KMatrix`]'s layout) dotted with each token of
/// `x`.
///
/// # Safety
/// AVX-512 F, BW and VNNI available; the slices hold one group of `x.blocks` chunks;
/// `out.len() == x.n`.
///
/// # Panics
/// If `out` holds no token or more than [`crate::blocks::TILE`].
pub(super) unsafe fn dot_tile(
    group: (&[u8], &[i8], &[f32]),
    x: &TileTokens<'_>,
    out: &mut [[f32; ROWS]],
) {
    debug_assert!(group.0.len() == ROWS * x.blocks * CHUNK);
    debug_assert!(group.1.len() == 2 * ROWS * x.blocks);
    debug_assert!(group.2.len() == ROWS * (x.blocks / CHUNKS));
    // SAFETY: the caller's contract, with `N` the number of tokens.
    unsafe { by_count!(tile, out, (group, x, out)) }
}

/// Four signed bytes at `p` widened to floats.
///
/// # Safety
/// SSE4.1; `p` addresses 4 readable bytes.
#[inline(always)]
unsafe fn bytes_to_f32(p: *const i8) -> __m128 {
    // SAFETY: `p` addresses 4 bytes (the caller's contract).
    unsafe {
        let word = std::ptr::read_unaligned(p.cast::<i32>());
        _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(word)))
    }
}

/// [`dot_tile`] for `N` tokens.
///
/// # Safety
/// As [`dot_tile`], with `out.len() == N`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const N: usize>(
    (w, sc, d): (&[u8], &[i8], &[f32]),
    x: &TileTokens<'_>,
    out: &mut [[f32; ROWS]],
) {
    // SAFETY: every offset is within the slices (the caller's contract): token `t`'s chunk `c`
    // at `c * N + t` ([`TileTokens`]); a prefetch past the end is harmless (it never faults).
    unsafe {
        let (q, dx, halves) = (x.quants.as_ptr(), x.scales.as_ptr(), x.half_sums.as_ptr());
        let low4 = _mm512_set1_epi8(0x0F);
        let bits45 = _mm512_set1_epi8(0x30);
        // Row `r`'s 8 pair bytes into both 64-bit halves of lane `r`.
        let double = _mm512_set_epi64(3, 3, 2, 2, 1, 1, 0, 0);
        // Weights 0..8 take bits 0-1 of the pairs, 8..16 bits 2-3 (moved to bits 4-5), 16..24
        // bits 4-5, 24..32 bits 6-7.
        let up = _mm512_set_epi64(2, 4, 2, 4, 2, 4, 2, 4);
        let down = _mm512_set_epi64(2, 0, 2, 0, 2, 0, 2, 0);
        let mut acc = [_mm512_setzero_ps(); N];
        for c in 0..x.blocks {
            let chunk = w.as_ptr().add(c * ROWS * CHUNK);
            _mm_prefetch::<_MM_HINT_T0>(chunk.wrapping_add(PREFETCH * ROWS * CHUNK).cast());
            _mm_prefetch::<_MM_HINT_T0>(chunk.wrapping_add(PREFETCH * ROWS * CHUNK + 64).cast());
            let nibbles = _mm512_loadu_si512(chunk.cast());
            let pairs = _mm512_castsi256_si512(_mm256_loadu_si256(chunk.add(PAIRS).cast()));
            let pairs = _mm512_permutexvar_epi64(double, pairs);
            let lo = _mm512_or_si512(
                _mm512_and_si512(nibbles, low4),
                _mm512_and_si512(_mm512_sllv_epi64(pairs, up), bits45),
            );
            let hi = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(nibbles), low4),
                _mm512_and_si512(_mm512_srlv_epi64(pairs, down), bits45),
            );
            let step = _mm_loadu_ps(d.as_ptr().add((c / CHUNKS) * ROWS));
            let s = sc.as_ptr().add(c * 2 * ROWS);
            let s0 = spread(_mm_mul_ps(step, bytes_to_f32(s)));
            let s1 = spread(_mm_mul_ps(step, bytes_to_f32(s.add(ROWS))));
            let (qc, at) = (q.add(c * N * BLOCK), c * N);
            for (t, acc) in acc.iter_mut().enumerate() {
                let qt = qc.add(t * BLOCK);
                let xlo = _mm512_broadcast_i32x4(_mm_loadu_si128(qt.cast()));
                let xhi = _mm512_broadcast_i32x4(_mm_loadu_si128(qt.add(16).cast()));
                let h = halves.add(2 * (at + t));
                // A quarter of `-32 * half sum` in each of a row's 4 lanes.
                let sum0 = _mm512_dpbusd_epi32(_mm512_set1_epi32(-8 * *h), lo, xlo);
                let sum1 = _mm512_dpbusd_epi32(_mm512_set1_epi32(-8 * *h.add(1)), hi, xhi);
                let both = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(sum1),
                    s1,
                    _mm512_mul_ps(_mm512_cvtepi32_ps(sum0), s0),
                );
                *acc = _mm512_fmadd_ps(both, _mm512_set1_ps(*dx.add(at + t)), *acc);
            }
        }
        for (dots, acc) in out.iter_mut().zip(acc) {
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
            *dots = std::array::from_fn(|r| lanes[4 * r..4 * r + 4].iter().sum());
        }
    }
}
