//! The Q4_0 integer tile (AVX-512 VNNI): one group's 4 rows times up to [`TILE`] tokens, each
//! block's 64 bytes of weights loaded and unpacked once for all the tokens. A 512-bit register
//! holds the 4 rows' 16 bytes side by side (one 128-bit lane per row) and each token's block
//! half is broadcast to the 4 lanes, so two `vpdpbusd` give every row's sum for one token; the
//! offset 8 starts the sums at `-8 * Σ token quants` (a quarter in each of a row's 4 lanes), and
//! one multiply-add per token and block applies both steps.

use std::arch::x86_64::*;

use super::PACKED;
use crate::blocks::{BLOCK, ROWS, TILE, Tokens};

/// How many blocks ahead the tile prefetches a group's quants.
const PREFETCH: usize = 16;

/// Group rows `w` (steps `s`) dotted with tokens `first..first + out.len()` of `x`.
///
/// # Safety
/// AVX-512 F, BW and VNNI available; `w` holds `ROWS * x.blocks * PACKED` bytes, `s`
/// `ROWS * x.blocks` steps; `first + out.len() <= x.m` and `out.len() <= TILE`.
///
/// # Panics
/// If `out` holds more than [`TILE`] tokens.
pub(super) unsafe fn dot_tile(
    w: &[u8],
    s: &[f32],
    x: &Tokens<'_>,
    first: usize,
    out: &mut [[f32; ROWS]],
) {
    debug_assert!(w.len() == ROWS * x.blocks * PACKED && s.len() == ROWS * x.blocks);
    debug_assert!(first + out.len() <= x.m);
    macro_rules! by_count {
        ($($n:literal)*) => {
            match out.len() {
                // SAFETY: the caller's contract, with `N` the number of tokens.
                $($n => unsafe { tile::<$n>(w, s, x, first, out) },)*
                n => panic!("a Q4_0 tile takes at most {TILE} tokens, not {n}"),
            }
        };
    }
    by_count!(1 2 3 4 5 6)
}

/// [`dot_tile`] for `N` tokens: the accumulators stay in registers.
///
/// # Safety
/// As [`dot_tile`], with `out.len() == N`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const N: usize>(
    w: &[u8],
    s: &[f32],
    x: &Tokens<'_>,
    first: usize,
    out: &mut [[f32; ROWS]],
) {
    let (blocks, k) = (x.blocks, x.blocks * BLOCK);
    // SAFETY: every offset is within the slices (the caller's contract): token `first + t`'s
    // block `b` quants at `(first + t) * k + b * BLOCK`, its step and sum at
    // `(first + t) * blocks + b`; a prefetch past the end is harmless (it never faults).
    unsafe {
        let q = x.quants.as_ptr().add(first * k);
        let dx = x.scales.as_ptr().add(first * blocks);
        let sums = x.sums.as_ptr().add(first * blocks);
        let low4 = _mm512_set1_epi8(0x0F);
        let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..blocks {
            let wb = w.as_ptr().add(b * ROWS * PACKED);
            _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(PREFETCH * ROWS * PACKED).cast());
            let packed = _mm512_loadu_si512(wb.cast());
            let lo = _mm512_and_si512(packed, low4);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low4);
            let steps = _mm512_permutexvar_ps(
                spread,
                _mm512_castps128_ps512(_mm_loadu_ps(s.as_ptr().add(b * ROWS))),
            );
            for (t, acc) in acc.iter_mut().enumerate() {
                let qt = q.add(t * k + b * BLOCK);
                let xlo = _mm512_broadcast_i32x4(_mm_loadu_si128(qt.cast()));
                let xhi = _mm512_broadcast_i32x4(_mm_loadu_si128(qt.add(PACKED).cast()));
                let start = _mm512_set1_epi32(-2 * *sums.add(t * blocks + b));
                let sum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(start, lo, xlo), hi, xhi);
                let step = _mm512_mul_ps(steps, _mm512_set1_ps(*dx.add(t * blocks + b)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), step, *acc);
            }
        }
        for (dots, acc) in out.iter_mut().zip(acc) {
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
            *dots = std::array::from_fn(|r| lanes[4 * r..4 * r + 4].iter().sum());
        }
    }
}
