//! The integer tile of the formats whose blocks hold 16 bytes of nibbles per row, weight `j` in
//! the low nibble of byte `j` and weight `j + 16` in its high one (Q4_0, Q4_1, Q4_K as stored
//! here; Q5_0 and Q5_1 with a fifth bit per weight besides), on AVX-512 VNNI: one group's 4 rows
//! times up to [`super::TILE`] tokens, each block's 64 bytes of weights loaded and unpacked once
//! for all the tokens. A 512-bit register holds the 4 rows' 16 bytes side by side (one 128-bit
//! lane per row) and each token's block half is broadcast to the 4 lanes, so two `vpdpbusd`
//! give every row's sum for one token; one multiply-add per token and block applies the row's
//! and the token's steps. The weights' offset is taken out
//! with the token block's sum: a constant (8 for Q4_0, 16 for Q5_0) starts the integer sums at
//! `-offset * sum`, a min per row and block (Q4_K; Q4_1's and Q5_1's, negated) is subtracted in
//! floats.

use std::arch::x86_64::*;

use super::{BLOCK, ROWS, TileTokens};

/// A block's fifth bits for its low and high nibbles (`0x10` where set), from the block.
pub(crate) type Fifths = fn(*const u8) -> (__m512i, __m512i);

/// No fifth bits (the 4-bit formats), as `nibble_tile`'s `fifths`.
pub(crate) const NO_FIFTHS: Option<Fifths> = None;

/// How many blocks ahead the tile prefetches a group's quants.
const PREFETCH: usize = 16;

/// What a block's values are offset by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offset {
    /// `step * (q - c)` (Q4_0: 8, Q5_0: 16), `c` a multiple of 4.
    Constant(i32),
    /// `step * q - min` (Q4_K).
    Mins,
}

/// Runs `$tile::<N>(args)` for `N` the number of tokens in `$out` (1 to [`super::TILE`]), so that a
/// tile's accumulators are registers.
macro_rules! by_count {
    ($tile:ident, $out:expr, ($($arg:expr),*)) => {
        match $out.len() {
            1 => $tile::<1>($($arg),*),
            2 => $tile::<2>($($arg),*),
            3 => $tile::<3>($($arg),*),
            4 => $tile::<4>($($arg),*),
            5 => $tile::<5>($($arg),*),
            6 => $tile::<6>($($arg),*),
            n => panic!("a tile takes 1 to {} tokens, not {n}", $crate::blocks::TILE),
        }
    };
}
pub(crate) use by_count;

/// The per-row values of a block (4 floats, one per row) spread to the 4 lanes of each row.
///
/// # Safety
/// AVX-512F available.
#[inline(always)]
pub(crate) unsafe fn spread(rows: __m128) -> __m512 {
    // SAFETY: register arithmetic; AVX-512F guaranteed by the caller.
    unsafe {
        let index = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        _mm512_permutexvar_ps(index, _mm512_castps128_ps512(rows))
    }
}

/// Group rows `w` (`x.blocks` blocks of `stride >= ROWS * 16` bytes, the rows' nibbles first)
/// dotted with the `N` tokens of `x`, into `out`; `scales(b)` gives block `b`'s
/// steps and mins (for [`Offset::Mins`]), each [`spread`]; `fifths(block)`, where the format has
/// fifth bits, gives them for the low and the high nibbles (`0x10` where set).
///
/// # Safety
/// AVX-512 F, BW and VNNI available; `w` holds `x.blocks * stride` bytes; `x.n == N` and
/// `out.len() == N`; `fifths` reads within the block it is given.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn nibble_tile<const N: usize>(
    (w, stride): (&[u8], usize),
    x: &TileTokens<'_>,
    out: &mut [[f32; ROWS]],
    offset: Offset,
    scales: impl Fn(usize) -> (__m512, __m512),
    fifths: Option<impl Fn(*const u8) -> (__m512i, __m512i)>,
) {
    debug_assert!(w.len() == x.blocks * stride && x.n == N && out.len() == N);
    debug_assert!(!matches!(offset, Offset::Constant(c) if c % 4 != 0));
    // SAFETY: every offset is within the slices (the caller's contract): token `t`'s block `b`
    // at `b * N + t` ([`TileTokens`]); a prefetch past the end is harmless (it never faults).
    unsafe {
        let (q, dx) = (x.quants.as_ptr(), x.scales.as_ptr());
        let (sums, shares) = (x.sums.as_ptr(), x.shares.as_ptr());
        let low4 = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..x.blocks {
            let wb = w.as_ptr().add(b * stride);
            _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(PREFETCH * stride).cast());
            let packed = _mm512_loadu_si512(wb.cast());
            let mut lo = _mm512_and_si512(packed, low4);
            let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low4);
            if let Some(fifths) = &fifths {
                let (lo5, hi5) = fifths(wb);
                lo = _mm512_or_si512(lo, lo5);
                hi = _mm512_or_si512(hi, hi5);
            }
            let (steps, mins) = scales(b);
            // A quarter of the min's share in each of a row's 4 lanes.
            let mins = _mm512_mul_ps(mins, _mm512_set1_ps(0.25));
            let (qb, at) = (q.add(b * N * BLOCK), b * N);
            for (t, acc) in acc.iter_mut().enumerate() {
                let qt = qb.add(t * BLOCK);
                let xlo = _mm512_broadcast_i32x4(_mm_loadu_si128(qt.cast()));
                let xhi = _mm512_broadcast_i32x4(_mm_loadu_si128(qt.add(BLOCK / 2).cast()));
                let start = match offset {
                    // A quarter of `-c * sum` in each of a row's 4 lanes.
                    Offset::Constant(c) => _mm512_set1_epi32(-(c / 4) * *sums.add(at + t)),
                    Offset::Mins => _mm512_setzero_si512(),
                };
                let dots = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(start, lo, xlo), hi, xhi);
                let d = *dx.add(at + t);
                let step = _mm512_mul_ps(steps, _mm512_set1_ps(d));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), step, *acc);
                if offset == Offset::Mins {
                    let share = _mm512_set1_ps(*shares.add(at + t));
                    *acc = _mm512_fnmadd_ps(mins, share, *acc);
                }
            }
        }
        for (dots, acc) in out.iter_mut().zip(acc) {
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
            *dots = std::array::from_fn(|r| lanes[4 * r..4 * r + 4].iter().sum());
        }
    }
}
