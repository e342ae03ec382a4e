//! The Q4_K integer tile (AVX-512 VNNI): the shared 4-bit tile ([`nibble_tile`]) with each
//! block's steps (`d * scale`) and mins (`dmin * min`) for the 4 rows.

use std::arch::x86_64::*;

use super::{PACKED, SUBS};
use crate::blocks::tile::{NO_FIFTHS, Offset, by_count, nibble_tile, spread};
use crate::blocks::{ROWS, TileTokens};

/// Group rows (quants, scales and mins, steps: [`super::Q4KMatrix`]'s layout) dotted with
/// each token of `x`.
///
/// # Safety
/// AVX-512 F, BW and VNNI available; the slices hold one group of `x.blocks` blocks;
/// `out.len() == x.n`.
///
/// # Panics
/// If `out` holds no token or more than [`crate::blocks::TILE`].
pub(super) unsafe fn dot_tile(
    group: (&[u8], &[u8], &[f32]),
    x: &TileTokens<'_>,
    out: &mut [[f32; ROWS]],
) {
    debug_assert!(group.0.len() == ROWS * x.blocks * PACKED);
    debug_assert!(group.1.len() == 2 * ROWS * x.blocks);
    debug_assert!(group.2.len() == 2 * ROWS * (x.blocks / SUBS));
    // SAFETY: the caller's contract, with `N` the number of tokens.
    unsafe { by_count!(tile, out, (group, x, out)) }
}

/// Four bytes at `p` widened to floats.
///
/// # Safety
/// SSE4.1; `p` addresses 4 readable bytes.
#[inline(always)]
unsafe fn bytes_to_f32(p: *const u8) -> __m128 {
    // SAFETY: `p` addresses 4 bytes (the caller's contract).
    unsafe {
        let word = std::ptr::read_unaligned(p.cast::<i32>());
        _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(word)))
    }
}

/// [`dot_tile`] for `N` tokens.
///
/// # Safety
/// As [`dot_tile`], with `out.len() == N`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const N: usize>(
    (w, subs, steps): (&[u8], &[u8], &[f32]),
    x: &TileTokens<'_>,
    out: &mut [[f32; ROWS]],
) {
    // SAFETY: the caller's contract; block `b`'s scales and mins at `subs[b * 8..]`, its
    // super-block's steps at `steps[b / 8 * 8..]`.
    unsafe {
        let scales = |b: usize| {
            let s = (b / SUBS) * 2 * ROWS;
            let d = _mm_loadu_ps(steps.as_ptr().add(s));
            let dmin = _mm_loadu_ps(steps.as_ptr().add(s + ROWS));
            let sc = bytes_to_f32(subs.as_ptr().add(b * 2 * ROWS));
            let mins = bytes_to_f32(subs.as_ptr().add(b * 2 * ROWS + ROWS));
            (spread(_mm_mul_ps(d, sc)), spread(_mm_mul_ps(dmin, mins)))
        };
        nibble_tile::<N>((w, ROWS * PACKED), x, out, Offset::Mins, scales, NO_FIFTHS)
    }
}
