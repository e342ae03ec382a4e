//! The Q5_0 dot products' SIMD body (AVX2; AVX-512 VNNI runs the integer tile, `tile.rs`, for
//! any number of tokens): the low nibbles unpacked as Q4_0's, each fifth bit spread to its
//! byte (a shuffle, an OR with every bit but one, a compare), the values (0..32) multiplied by
//! the token's signed 8-bit quants, and the offset 16 taken out per block through the token
//! block's sum ([`offset_dot_rows`]).

use std::arch::x86_64::*;

use super::{FIFTHS, PACKED};
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

/// The 32 values (0..32) of row `r` of the group's block at `p`.
///
/// # Safety
/// AVX2; `p` addresses `ROWS * PACKED` readable bytes, `r < ROWS`.
#[inline(always)]
pub(crate) unsafe fn unpack(p: *const u8, r: usize) -> __m256i {
    // SAFETY: the nibbles and the word are within the block (the caller's contract).
    unsafe {
        let nibbles = nibbles(p.add(16 * r));
        // Byte i of the word to bytes 8i..8i+8; each byte ORed with all bits but bit (i % 8):
        // all ones exactly where that bit is set.
        let word = std::ptr::read_unaligned(p.add(FIFTHS + 4 * r).cast::<i32>());
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(word),
            _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0x0000000000000000,
            ),
        );
        let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
        _mm256_or_si256(nibbles, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }
}

/// # Safety
/// AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(w: &[u8], s: &[f32], x: Token<'_>, blocks: usize) -> [f32; ROWS] {
    // SAFETY: `dot_rows`' contract; AVX2 and FMA enabled here.
    unsafe {
        let (unpack, dot) = (|p, r| unpack(p, r), |a, b| dot_avx2(a, b));
        offset_dot_rows((w, PACKED), s, x, blocks, |at| 16.0 * s[at], unpack, dot)
    }
}
