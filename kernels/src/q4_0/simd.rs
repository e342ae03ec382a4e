//! The Q4_0 dot products' SIMD bodies (AVX2, AVX-512 VNNI): each row's 16 packed bytes
//! unpacked to 32 unsigned nibbles, multiplied by the token's signed 8-bit quants, and the
//! offset 8 taken out per block through the token block's sum ([`offset_dot_rows`]).

use std::arch::x86_64::*;

use super::PACKED;
use crate::Isa;
use crate::blocks::simd::{dot_avx2, dot_vnni, offset_dot_rows};
use crate::blocks::{ROWS, Token};
use crate::simd::vnni;

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
    // SAFETY: as the caller guarantees; VNNI checked here.
    unsafe {
        if isa >= Isa::Avx512 && vnni() {
            dot_rows_vnni(w, s, x, blocks)
        } else {
            dot_rows_avx2(w, s, x, blocks)
        }
    }
}

/// The 32 values (0..16) of the block at `p`: byte `j`'s low nibble is weight `j`, its high
/// nibble weight `j + 16`.
///
/// # Safety
/// AVX2; `p` addresses `PACKED` readable bytes.
#[inline(always)]
unsafe fn unpack(p: *const u8) -> __m256i {
    // SAFETY: `p` addresses PACKED bytes (the caller's contract).
    unsafe {
        let low = _mm_set1_epi8(0x0F);
        let packed = _mm_loadu_si128(p.cast());
        let lo = _mm_and_si128(packed, low);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
        _mm256_set_m128i(hi, lo)
    }
}

/// # Safety
/// AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(w: &[u8], s: &[f32], x: Token<'_>, blocks: usize) -> [f32; ROWS] {
    // SAFETY: `dot_rows`' contract; AVX2 and FMA enabled here.
    unsafe {
        let (unpack, dot) = (|p| unpack(p), |a, b| dot_avx2(a, b));
        offset_dot_rows((w, PACKED), s, x, blocks, 8.0, unpack, dot)
    }
}

/// # Safety
/// AVX-512 VNNI and VL, AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx512vnni,avx512vl,avx2,fma")]
unsafe fn dot_rows_vnni(w: &[u8], s: &[f32], x: Token<'_>, blocks: usize) -> [f32; ROWS] {
    // SAFETY: `dot_rows`' contract; VNNI, AVX2 and FMA enabled here.
    unsafe {
        let (unpack, dot) = (|p| unpack(p), |a, b| dot_vnni(a, b));
        offset_dot_rows((w, PACKED), s, x, blocks, 8.0, unpack, dot)
    }
}
