//! Q5_1 matrices: weights in 5-bit blocks of 32 with an f16 step and an f16 min each (ggml's
//! Q5_1: the weight is `step * q + min`, `q` in 0..32), stored as Q5_0's blocks (a group's
//! rows' nibbles, then their fifth-bit words) with the min beside the step; Q5_0's unpacking,
//! the min added once per block with the token block's sum. A decoding step reads 28 bytes
//! per 32 weights (the file: 24; step and min kept as f32).

use half::f16;

use crate::Isa;
use crate::blocks::{
    BLOCK, BlockMatrix, Groups, ROWS, TileTokens, Token, block_index, check_tile,
    dot_tile_by_token, matmul_t_many, vnni_tiles, with_isa,
};
use crate::q5_0::{FIFTHS, PACKED};

/// A `[rows, cols]` matrix in Q5_1 blocks (`cols` a multiple of [`BLOCK`]), stored as the block
/// formats here are: groups of 4 rows whose blocks interleave (group, block, row), a last group
/// short of rows padded with zeros.
#[derive(Clone)]
pub struct Q5_1Matrix {
    rows: usize,
    cols: usize,
    /// `[groups, blocks, (16 bytes per row: nibbles; 4 bytes per row: fifth bits)]`, as
    /// [`crate::q5_0::Q5_0Matrix`] stores them.
    quants: Vec<u8>,
    /// `[groups, blocks, ROWS]`: each block's step, as stored (f16), widened.
    steps: Vec<f32>,
    /// `[groups, blocks, ROWS]`: each block's min, as stored (f16), widened.
    mins: Vec<f32>,
}

impl std::fmt::Debug for Q5_1Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q5_1Matrix[{}, {}]", self.rows, self.cols)
    }
}

impl Q5_1Matrix {
    /// The matrix whose rows are ggml `block_q5_1`s as GGUF files store them (`rows` rows of
    /// `cols / 32` blocks, each a little-endian f16 step, an f16 min, 4 bytes of fifth bits,
    /// then 16 bytes of low nibbles), taken as they are. `None` when `bytes` is not exactly
    /// that many blocks or `cols` is not a multiple of [`BLOCK`].
    pub fn from_ggml_blocks(bytes: &[u8], rows: usize, cols: usize) -> Option<Q5_1Matrix> {
        const BLOCK_BYTES: usize = 4 + 4 + BLOCK / 2;
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let blocks = cols / BLOCK;
        if bytes.len() != rows.checked_mul(blocks)?.checked_mul(BLOCK_BYTES)? {
            return None;
        }
        let padded = rows.div_ceil(ROWS).checked_mul(ROWS)?;
        let mut m = Q5_1Matrix {
            rows,
            cols,
            quants: vec![0; padded.checked_mul(blocks)?.checked_mul(PACKED)?],
            steps: vec![0.0; padded.checked_mul(blocks)?],
            mins: vec![0.0; padded.checked_mul(blocks)?],
        };
        for (i, block) in bytes.chunks_exact(BLOCK_BYTES).enumerate() {
            let at = block_index(i / blocks, i % blocks, blocks);
            m.steps[at] = f16::from_le_bytes([block[0], block[1]]).to_f32();
            m.mins[at] = f16::from_le_bytes([block[2], block[3]]).to_f32();
            let (nibbles, fifths) = places(at);
            m.quants[nibbles..nibbles + 16].copy_from_slice(&block[8..]);
            m.quants[fifths..fifths + 4].copy_from_slice(&block[4..8]);
        }
        Some(m)
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes the matrix takes in the file: 24 per 32 weights.
    pub fn bytes(&self) -> usize {
        self.rows * (self.cols / BLOCK) * 24
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

    /// Block `at`'s 32 values (0..32).
    #[inline(always)]
    fn values(&self, at: usize) -> [u8; BLOCK] {
        let (nibbles, fifths) = places(at);
        let q = &self.quants[nibbles..nibbles + 16];
        let f = &self.quants[fifths..fifths + 4];
        let high = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
        std::array::from_fn(|i| {
            let low = if i < 16 { q[i] & 0xF } else { q[i - 16] >> 4 };
            low | ((((high >> i) & 1) as u8) << 4)
        })
    }

    /// The dequantization loop (compiled per ISA by [`Groups::dequantize_rows`]).
    #[inline(always)]
    fn dequantize_rows_with(&self, first: usize, out: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        for (i, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            for (b, dst) in row.chunks_exact_mut(BLOCK).enumerate() {
                let at = block_index(first + i, b, blocks);
                let (d, min) = (self.steps[at], self.mins[at]);
                for (o, v) in dst.iter_mut().zip(self.values(at)) {
                    *o = v as f32 * d + min;
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

/// Where block `at` (a [`block_index`]) keeps its nibbles and its fifth bits, as Q5_0's.
#[inline(always)]
fn places(at: usize) -> (usize, usize) {
    let (base, row) = ((at / ROWS) * ROWS * PACKED, at % ROWS);
    (base + 16 * row, base + FIFTHS + 4 * row)
}

impl BlockMatrix for Q5_1Matrix {
    const FORMAT: &'static str = "q5_1";

    fn shape(&self) -> (usize, usize) {
        Q5_1Matrix::shape(self)
    }

    fn matmul_t_many(isa: Isa, parts: &[&Self], x: &[f32], m: usize, out: &mut [f32]) {
        matmul_t_many(isa, parts, x, m, out)
    }
}

impl Groups for Q5_1Matrix {
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
            () => self.dot_group_portable(g, token),
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

impl Q5_1Matrix {
    /// Group `g`'s rows dotted with `x`, in plain Rust.
    fn dot_group_portable(&self, g: usize, x: Token<'_>) -> [f32; ROWS] {
        let blocks = self.cols / BLOCK;
        let mut dots = [0f32; ROWS];
        for (b, (xb, dx)) in x.quants.chunks_exact(BLOCK).zip(x.scales).enumerate() {
            for (r, dot) in dots.iter_mut().enumerate() {
                let at = block_index(g * ROWS + r, b, blocks);
                let sum: i32 = self
                    .values(at)
                    .iter()
                    .zip(xb)
                    .map(|(&v, &q)| v as i32 * q as i32)
                    .sum();
                *dot += sum as f32 * (self.steps[at] * dx) + self.mins[at] * dx * x.sums[b] as f32;
            }
        }
        dots
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! The Q5_1 dot product's SIMD body (AVX2; AVX-512 VNNI runs the tile): Q5_0's unpacking
    //! in the shared row loop ([`offset_dot_rows`]), the min as a negative offset.

    use crate::blocks::simd::{dot_avx2, offset_dot_rows};
    use crate::blocks::{ROWS, Token};
    use crate::q5_0::PACKED;
    use crate::q5_0::simd::unpack;

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
            let (unpack, dot) = (|p, r| unpack(p, r), |a, b| dot_avx2(a, b));
            offset_dot_rows((w, PACKED), s, x, blocks, |at| -mins[at], unpack, dot)
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod tile {
    //! The Q5_1 integer tile (AVX-512 VNNI): the shared nibble tile with Q5_0's fifth bits,
    //! each block's steps and its mins, negated (the tile subtracts them).

    use crate::blocks::tile::{Offset, by_count, nibble_tile};
    use crate::blocks::{ROWS, TileTokens};
    use crate::q4_1::tile::steps_and_mins;
    use crate::q5_0::PACKED;
    use crate::q5_0::tile::fifths;

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
        // SAFETY: the caller's contract; block `b`'s steps and mins at `[b * ROWS..]`, its
        // fifth bits within its `ROWS * PACKED` bytes.
        unsafe {
            let scales = |b: usize| steps_and_mins(s, mins, b);
            let fifths = |block| fifths(block);
            let w = (w, ROWS * PACKED);
            nibble_tile::<N>(w, x, out, Offset::Mins, scales, Some(fifths))
        }
    }
}

#[cfg(test)]
mod tests;
