//! The Q4_0 dot products' SIMD body (AVX2; AVX-512 VNNI runs the integer tile, `tile.rs`,
//! for any number of tokens): each row's 16 packed bytes unpacked to 32 unsigned nibbles,
//! multiplied by the token's signed 8-bit quants, and the offset 8 taken out per block through
//! the token block's sum ([`offset_dot_rows`]).

use super::PACKED;
use crate::Isa;
use crate::blocks::simd::{dot_avx2, nibbles, offset_dot_rows};
use crate::blocks::{ROWS, Token};

/// One group's `ROWS` rows (packed `w`, steps `s`, interleaved by block) dotted with `x`.
///
/// # Safety
/// `isa` at least AVX2 and available; `w` holds `ROWS * blocks * PACKED` bytes, `s`
/// `ROWS * blocks` steps, the token `blocks` blocks.
pub(super) unsafe fn dot_rows(
    isa: Isa,
    w: &[u8],
    s: &[f32],
    x: Token<'_>,
    blocks: usize,
) -> [f32; ROWS] {
    debug_assert!(isa >= Isa::Avx2Fma);
    // SAFETY: as the caller guarantees.
    unsafe { dot_rows_avx2(w, s, x, blocks) }
}

/// # Safety
/// AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(w: &[u8], s: &[f32], x: Token<'_>, blocks: usize) -> [f32; ROWS] {
    // SAFETY: `dot_rows`' contract; AVX2 and FMA enabled here.
    unsafe {
        let (unpack, dot) = (
            |p: *const u8, r| nibbles(p.add(r * PACKED)),
            |a, b| dot_avx2(a, b),
        );
        offset_dot_rows((w, PACKED), s, x, blocks, |at| 8.0 * s[at], unpack, dot)
    }
}
