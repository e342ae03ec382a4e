//! Q4_1 matrices: weights in 4-bit blocks of 32 with an f16 step and an f16 min each (ggml's
//! Q4_1: the weight is `step * q + min`, `q` in 0..16), stored as Q4_0's blocks with the min
//! beside the step, multiplied by tokens quantized to 8 bits per block in integer dot products
//! (an AVX-512 VNNI tile, else AVX2), the min added once per block with the token block's sum.
//! A decoding step reads 24 bytes per 32 weights (the file: 20; step and min kept as f32).

use half::f16;

use crate::Isa;
use crate::blocks::{
    BLOCK, BlockMatrix, Groups, ROWS, TileTokens, Token, block_index, check_tile,
    dot_tile_by_token, matmul_t_many, vnni_tiles, with_isa,
};

/// Bytes of one row's quants in a block: two 4-bit weights per byte.
const PACKED: usize = BLOCK / 2;

/// A `[rows, cols]` matrix in Q4_1 blocks (`cols` a multiple of [`BLOCK`]), stored as the block
/// formats here are: groups of 4 rows whose blocks interleave (group, block, row), a last group
/// short of rows padded with zeros. Byte `j` of a block holds weight `j` in its low nibble and
/// weight `j + 16` in its high one, as ggml stores them.
#[derive(Clone)]
pub struct Q4_1Matrix {
    rows: usize,
    cols: usize,
    /// `[groups, blocks, ROWS, PACKED]`.
    quants: Vec<u8>,
    /// `[groups, blocks, ROWS]`: each block's step, as stored (f16), widened.
    steps: Vec<f32>,
    /// `[groups, blocks, ROWS]`: each block's min, as stored (f16), widened.
    mins: Vec<f32>,
}

impl std::fmt::Debug for Q4_1Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q4_1Matrix[{}, {}]", self.rows, self.cols)
    }
}

impl Q4_1Matrix {
    /// The matrix whose rows are ggml `block_q4_1`s as GGUF files store them (`rows` rows of
    /// `cols / 32` blocks, each a little-endian f16 step, an f16 min, then 16 bytes of packed
    /// weights), taken as they are. `None` when `bytes` is not exactly that many blocks or
    /// `cols` is not a multiple of [`BLOCK`].
    pub fn from_ggml_blocks(bytes: &[u8], rows: usize, cols: usize) -> Option<Q4_1Matrix> {
        const BLOCK_BYTES: usize = 4 + PACKED;
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let blocks = cols / BLOCK;
        if bytes.len() != rows.checked_mul(blocks)?.checked_mul(BLOCK_BYTES)? {
            return None;
        }
        let padded = rows.div_ceil(ROWS).checked_mul(ROWS)?;
        let mut m = Q4_1Matrix {
            rows,
            cols,
            quants: vec![0; padded.checked_mul(cols / 2)?],
            steps: vec![0.0; padded.checked_mul(blocks)?],
            mins: vec![0.0; padded.checked_mul(blocks)?],
        };
        for (i, block) in bytes.chunks_exact(BLOCK_BYTES).enumerate() {
            let at = block_index(i / blocks, i % blocks, blocks);
            m.steps[at] = f16::from_le_bytes([block[0], block[1]]).to_f32();
            m.mins[at] = f16::from_le_bytes([block[2], block[3]]).to_f32();
            m.quants[at * PACKED..(at + 1) * PACKED].copy_from_slice(&block[4..]);
        }
        Some(m)
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes the matrix takes in the file: 20 per 32 weights.
    pub fn bytes(&self) -> usize {
        self.rows * (self.cols / BLOCK) * (4 + PACKED)
    }

    /// The weights the blocks stand for, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows_with(0, &mut out);
        out
    }

    /// `out = x W^T` on the kernel threads (as [`crate::q8_0::Q8_0Matrix::matmul_t`]).
    ///
    /// # Panics
    /// If the slice lengths do not agree with `m` and the matrix's shape.
    pub fn matmul_t(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32]) {
        matmul_t_many(isa, &[self], x, m, out)
    }

    /// The dequantization loop (compiled per ISA by [`Groups::dequantize_rows`]).
    #[inline(always)]
    fn dequantize_rows_with(&self, first: usize, out: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        for (i, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            for (b, dst) in row.chunks_exact_mut(BLOCK).enumerate() {
                let at = block_index(first + i, b, blocks);
                let (d, min) = (self.steps[at], self.mins[at]);
                let packed = &self.quants[at * PACKED..(at + 1) * PACKED];
                let (lo, hi) = dst.split_at_mut(PACKED);
                for ((l, h), &byte) in lo.iter_mut().zip(hi).zip(packed) {
                    *l = (byte & 0x0F) as f32 * d + min;
                    *h = (byte >> 4) as f32 * d + min;
                }
            }
        }
    }

    /// Group `g`'s slices: quants, steps, mins.
    fn group(&self, g: usize) -> (&[u8], &[f32], &[f32]) {
        let blocks = self.cols / BLOCK;
        let (q, s) = (blocks * ROWS * PACKED, blocks * ROWS);
        (
            &self.quants[g * q..(g + 1) * q],
            &self.steps[g * s..(g + 1) * s],
            &self.mins[g * s..(g + 1) * s],
        )
    }
}

impl BlockMatrix for Q4_1Matrix {
    const FORMAT: &'static str = "q4_1";

    fn shape(&self) -> (usize, usize) {
        Q4_1Matrix::shape(self)
    }

    fn matmul_t_many(isa: Isa, parts: &[&Self], x: &[f32], m: usize, out: &mut [f32]) {
        matmul_t_many(isa, parts, x, m, out)
    }
}

impl Groups for Q4_1Matrix {
    fn dims(&self) -> (usize, usize) {
        self.shape()
    }

    fn dot_group(&self, isa: Isa, g: usize, token: Token<'_>) -> [f32; ROWS] {
        let blocks = self.cols / BLOCK;
        assert!(
            token.quants.len() == self.cols && token.scales.len() == blocks,
            "dot_group: a token of {} values for {} inputs",
            token.quants.len(),
            self.cols
        );
        match () {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller's `isa` is available (`Groups::dot_group`); the slices hold
            // one group of `blocks` blocks, the token `blocks` blocks (checked above).
            () if isa >= Isa::Avx2Fma => unsafe { simd::dot_rows(self.group(g), token, blocks) },
            () => dot_rows_portable(self.group(g), token),
        }
    }

    fn dequantize_rows(&self, isa: Isa, first: usize, out: &mut [f32]) {
        with_isa(isa, || self.dequantize_rows_with(first, out))
    }

    fn tiles(&self, isa: Isa) -> bool {
        vnni_tiles(isa)
    }

    fn dot_tile(&self, isa: Isa, g: usize, x: &TileTokens<'_>, out: &mut [[f32; ROWS]]) {
        check_tile(x, self.cols, out);
        #[cfg(target_arch = "x86_64")]
        if self.tiles(isa) {
            // SAFETY: AVX-512 F, BW and VNNI are present (`tiles`); the slices hold one group
            // of `cols / 32` blocks, `x` tokens of as many blocks, `out` one per token.
            return unsafe { tile::dot_tile(self.group(g), x, out) };
        }
        dot_tile_by_token(self, isa, g, x, out)
    }
}

/// One group's `ROWS` rows (quants, steps, mins) dotted with one quantized token, in plain Rust.
fn dot_rows_portable((w, s, mins): (&[u8], &[f32], &[f32]), x: Token<'_>) -> [f32; ROWS] {
    let mut dots = [0f32; ROWS];
    for (b, (xb, dx)) in x.quants.chunks_exact(BLOCK).zip(x.scales).enumerate() {
        for (j, dot) in dots.iter_mut().enumerate() {
            let at = b * ROWS + j;
            let packed = &w[at * PACKED..(at + 1) * PACKED];
            let sum: i32 = packed
                .iter()
                .enumerate()
                .map(|(i, &byte)| {
                    (byte & 0x0F) as i32 * xb[i] as i32 + (byte >> 4) as i32 * xb[i + PACKED] as i32
                })
                .sum();
            *dot += sum as f32 * (s[at] * dx) + mins[at] * dx * x.sums[b] as f32;
        }
    }
    dots
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! The Q4_1 dot product's SIMD body (AVX2; AVX-512 VNNI runs the tile): Q4_0's row loop
    //! ([`offset_dot_rows`]) with the min as a negative offset.

    use super::PACKED;
    use crate::blocks::simd::{dot_avx2, nibbles, offset_dot_rows};
    use crate::blocks::{ROWS, Token};

    /// One group's `ROWS` rows (quants, steps, mins) dotted with `x`.
    ///
    /// # Safety
    /// AVX2 and FMA available; the slices hold one group of `blocks` blocks, the token
    /// `blocks` blocks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows(
        (w, s, mins): (&[u8], &[f32], &[f32]),
        x: Token<'_>,
        blocks: usize,
    ) -> [f32; ROWS] {
        // SAFETY: the caller's contract; AVX2 and FMA enabled here.
        unsafe {
            let (unpack, dot) = (
                |p: *const u8, r| nibbles(p.add(r * PACKED)),
                |a, b| dot_avx2(a, b),
            );
            offset_dot_rows((w, PACKED), s, x, blocks, |at| -mins[at], unpack, dot)
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod tile {
    //! The Q4_1 integer tile (AVX-512 VNNI): the shared nibble tile with each block's steps
    //! and its mins, negated (the tile subtracts them).

    use std::arch::x86_64::*;

    use super::PACKED;
    use crate::blocks::tile::{NO_FIFTHS, Offset, by_count, nibble_tile, spread};
    use crate::blocks::{ROWS, TileTokens};

    /// Group rows (quants, steps, mins) dotted with each token of `x`.
    ///
    /// # Safety
    /// AVX-512 F, BW and VNNI available; the slices hold one group of `x.blocks` blocks;
    /// `out.len() == x.n`.
    pub(super) unsafe fn dot_tile(
        group: (&[u8], &[f32], &[f32]),
        x: &TileTokens<'_>,
        out: &mut [[f32; ROWS]],
    ) {
        // SAFETY: the caller's contract, with `N` the number of tokens.
        unsafe { by_count!(tile, out, (group, x, out)) }
    }

    /// Block `b`'s steps and its mins, negated (the tile subtracts them), each spread to its
    /// row's lanes: the scales of the formats whose weights are `step * q + min` (Q4_1, Q5_1).
    ///
    /// # Safety
    /// AVX-512F available; `s` and `mins` hold `(b + 1) * ROWS` values.
    #[inline(always)]
    pub(crate) unsafe fn steps_and_mins(s: &[f32], mins: &[f32], b: usize) -> (__m512, __m512) {
        // SAFETY: the caller's contract.
        unsafe {
            let steps = spread(_mm_loadu_ps(s.as_ptr().add(b * ROWS)));
            let mins = _mm_sub_ps(_mm_setzero_ps(), _mm_loadu_ps(mins.as_ptr().add(b * ROWS)));
            (steps, spread(mins))
        }
    }

    /// [`dot_tile`] for `N` tokens.
    ///
    /// # Safety
    /// As [`dot_tile`], with `out.len() == N`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const N: usize>(
        (w, s, mins): (&[u8], &[f32], &[f32]),
        x: &TileTokens<'_>,
        out: &mut [[f32; ROWS]],
    ) {
        // SAFETY: the caller's contract; block `b`'s steps and mins at `[b * ROWS..]`.
        unsafe {
            let scales = |b: usize| steps_and_mins(s, mins, b);
            let w = (w, ROWS * PACKED);
            nibble_tile::<N>(w, x, out, Offset::Mins, scales, NO_FIFTHS)
        }
    }
}

#[cfg(test)]
mod tests;
