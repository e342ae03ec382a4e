//! The Q8_0 integer tile (AVX-512 VNNI): one group's 4 rows times 2 to [`crate::blocks::TILE`] tokens, each
//! block's 128 bytes of weights loaded once for all the tokens. `vpdpbusd` multiplies unsigned
//! by signed bytes, so the tokens' quants go in offset by 128 (`x + 128`, one XOR) against the
//! signed weights, and each lane's sum starts at `-128 x` its four weights' sum (computed once
//! per block, for all the tokens). Two 512-bit registers hold rows 0-1 and 2-3 (a row in eight
//! lanes); the token's block is broadcast to both halves.

use std::arch::x86_64::*;

use crate::blocks::tile::by_count;
use crate::blocks::{BLOCK, ROWS, TileTokens};

/// How many blocks ahead the tile prefetches a group's quants.
const PREFETCH: usize = 8;

/// Group rows `w` (steps `s`) dotted with each token of `x`.
///
/// # Safety
/// AVX-512 F, BW and VNNI available; `w` holds `ROWS * x.blocks * BLOCK` quants, `s`
/// `ROWS * x.blocks` steps; `out.len() == x.n`.
///
/// # Panics
/// If `out` holds no token or more than [`crate::blocks::TILE`].
pub(super) unsafe fn dot_tile(w: &[i8], s: &[f32], x: &TileTokens<'_>, out: &mut [[f32; ROWS]]) {
    debug_assert!(w.len() == ROWS * x.blocks * BLOCK && s.len() == ROWS * x.blocks);
    // SAFETY: the caller's contract, with `N` the number of tokens.
    unsafe { by_count!(tile, out, (w, s, x, out)) }
}

/// [`dot_tile`] for `N` tokens.
///
/// # Safety
/// As [`dot_tile`], with `out.len() == N`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const N: usize>(w: &[i8], s: &[f32], x: &TileTokens<'_>, out: &mut [[f32; ROWS]]) {
    // SAFETY: every offset is within the slices (the caller's contract): token `t`'s block `b`
    // at `b * N + t` ([`TileTokens`]); a prefetch past the end is harmless (it never faults).
    unsafe {
        let (q, dx) = (x.quants.as_ptr(), x.scales.as_ptr());
        let offset = _mm512_set1_epi8(-128);
        // Rows 0 and 1 (2 and 3) each in eight lanes.
        let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let mut acc = [[_mm512_setzero_ps(); 2]; N];
        for b in 0..x.blocks {
            let wb = w.as_ptr().add(b * ROWS * BLOCK);
            _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(PREFETCH * ROWS * BLOCK).cast());
            _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(PREFETCH * ROWS * BLOCK + 64).cast());
            let rows = [
                _mm512_loadu_si512(wb.cast()),
                _mm512_loadu_si512(wb.add(2 * BLOCK).cast()),
            ];
            // `-128 x` each lane's four weights: the start that takes the tokens' offset out.
            let starts = rows.map(|r| {
                _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, r),
                )
            });
            let steps = _mm_loadu_ps(s.as_ptr().add(b * ROWS));
            let steps = [
                _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(steps)),
                _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_movehl_ps(steps, steps))),
            ];
            let (qb, at) = (q.add(b * N * BLOCK), b * N);
            for (t, acc) in acc.iter_mut().enumerate() {
                let xq = _mm256_loadu_si256(qb.add(t * BLOCK).cast());
                let xu = _mm512_xor_si512(_mm512_broadcast_i64x4(xq), offset);
                let d = _mm512_set1_ps(*dx.add(at + t));
                for h in 0..2 {
                    let sums = _mm512_dpbusd_epi32(starts[h], xu, rows[h]);
                    let step = _mm512_mul_ps(steps[h], d);
                    acc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), step, acc[h]);
                }
            }
        }
        for (dots, acc) in out.iter_mut().zip(acc) {
            let mut lanes = [0f32; 32];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc[0]);
            _mm512_storeu_ps(lanes.as_mut_ptr().add(16), acc[1]);
            *dots = std::array::from_fn(|r| lanes[8 * r..8 * r + 8].iter().sum());
        }
    }
}
