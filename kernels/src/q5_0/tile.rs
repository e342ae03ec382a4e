//! The Q5_0 integer tile (AVX-512 VNNI): the shared nibble tile ([`nibble_tile`]) with each
//! block's four f32 steps, the offset 16, and the fifth bits ([`fifths`]).

use std::arch::x86_64::*;

use super::{FIFTHS, PACKED};
use crate::blocks::tile::{Offset, by_count, nibble_tile, spread};
use crate::blocks::{ROWS, TileTokens};

/// Group rows `w` (steps `s`) dotted with each token of `x`.
///
/// # Safety
/// AVX-512 F, BW and VNNI available; `w` holds `ROWS * x.blocks * PACKED` bytes, `s`
/// `ROWS * x.blocks` steps; `out.len() == x.n`.
///
/// # Panics
/// If `out` holds no token or more than [`crate::blocks::TILE`].
pub(super) unsafe fn dot_tile(w: &[u8], s: &[f32], x: &TileTokens<'_>, out: &mut [[f32; ROWS]]) {
    debug_assert!(w.len() == ROWS * x.blocks * PACKED && s.len() == ROWS * x.blocks);
    // SAFETY: the caller's contract, with `N` the number of tokens.
    unsafe { by_count!(tile, out, (w, s, x, out)) }
}

/// [`dot_tile`] for `N` tokens.
///
/// # Safety
/// As [`dot_tile`], with `out.len() == N`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const N: usize>(w: &[u8], s: &[f32], x: &TileTokens<'_>, out: &mut [[f32; ROWS]]) {
    // SAFETY: the caller's contract; block `b`'s steps at `s[b * ROWS..]`, its rows' words at
    // `FIFTHS..FIFTHS + 16` of the block.
    unsafe {
        let steps = |b: usize| {
            let steps = spread(_mm_loadu_ps(s.as_ptr().add(b * ROWS)));
            (steps, steps)
        };
        let w = (w, ROWS * PACKED);
        let fifths = |block| fifths(block);
        nibble_tile::<N>(w, x, out, Offset::Constant(16), steps, Some(fifths))
    }
}

/// The fifth bits of the group's block at `block` (its rows' words at `FIFTHS..FIFTHS + 16`),
/// `0x10` where set, for the low nibbles and the high ones: the low 16-bit halves of the 4
/// words, then the high ones, as two 64-bit byte masks (a row per 16 bits, as the tile's
/// register holds a row per 16 bytes). Shared with Q5_1, which stores its bits the same way.
///
/// # Safety
/// AVX-512 F and BW (and SSE4.1) available; `block` addresses `ROWS * PACKED` readable bytes.
#[inline(always)]
pub(crate) unsafe fn fifths(block: *const u8) -> (__m512i, __m512i) {
    // SAFETY: the 16 bytes of words are within the block (the caller's contract).
    unsafe {
        let halves = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
        let fifth = _mm512_set1_epi8(0x10);
        let words = _mm_loadu_si128(block.add(FIFTHS).cast());
        let masks = _mm_shuffle_epi8(words, halves);
        let lo = _mm_cvtsi128_si64(masks) as u64;
        let hi = _mm_extract_epi64::<1>(masks) as u64;
        (
            _mm512_maskz_mov_epi8(lo, fifth),
            _mm512_maskz_mov_epi8(hi, fifth),
        )
    }
}
