//! The Q4_0 integer tile (AVX-512 VNNI): the shared 4-bit tile ([`nibble_tile`]) with each
//! block's four f32 steps.

use std::arch::x86_64::*;

use super::PACKED;
use crate::blocks::tile::{NO_FIFTHS, Offset, by_count, nibble_tile, spread};
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
    // SAFETY: the caller's contract; block `b`'s steps at `s[b * ROWS..]`.
    unsafe {
        let steps = |b: usize| {
            let steps = spread(_mm_loadu_ps(s.as_ptr().add(b * ROWS)));
            (steps, steps)
        };
        let w = (w, ROWS * PACKED);
        nibble_tile::<N>(w, x, out, Offset::Constant(8), steps, NO_FIFTHS)
    }
}
