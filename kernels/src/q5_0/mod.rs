//! Q5_0 matrices: weights in 5-bit blocks of 32 with one f16 step each (ggml's Q5_0: the
//! weight is `step * (q - 16)`, `q` in 0..32, its low 4 bits packed two to a byte as Q4_0's and
//! its fifth bits in one 32-bit word), multiplied by tokens quantized to 8 bits per block in
//! integer dot products (AVX-512 VNNI, else AVX2), the offset 16 taken out once per block with
//! the token block's sum. What llama.cpp's quantizer falls back to where Q4_K's 256-weight
//! super-blocks do not fit a row (hidden sizes such as 896).

use half::f16;

use crate::Isa;
use crate::blocks::{
    BLOCK, BlockMatrix, Groups, ROWS, TileTokens, Token, block_index, check_tile,
    dot_tile_by_token, matmul_t_many, vnni_tiles, with_isa,
};

/// Bytes of one row's block: 16 of low nibbles and the 32 fifth bits (little-endian).
pub(crate) const PACKED: usize = BLOCK / 2 + 4;
/// Where a group's block holds its rows' fifth bits (after their nibbles).
pub(crate) const FIFTHS: usize = ROWS * BLOCK / 2;

/// A `[rows, cols]` matrix in Q5_0 blocks (`cols` a multiple of [`BLOCK`]), stored as the
/// block formats here are: groups of 4 rows whose blocks interleave (group, block, row), a last
/// group short of rows padded with zeros.
#[derive(Clone)]
pub struct Q5_0Matrix {
    rows: usize,
    cols: usize,
    /// `[groups, blocks, (16 bytes per row: nibbles; 4 bytes per row: fifth bits)]`: nibble
    /// byte `j` holds weight `j`'s low 4 bits and weight `j + 16`'s in its high half; a row's
    /// fifth-bit word holds weight `i`'s fifth bit at bit `i`.
    quants: Vec<u8>,
    /// `[groups, blocks, ROWS]`: each block's step, as stored (f16), widened.
    scales: Vec<f32>,
}

impl std::fmt::Debug for Q5_0Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q5_0Matrix[{}, {}]", self.rows, self.cols)
    }
}

impl Q5_0Matrix {
    /// The matrix whose rows are ggml `block_q5_0`s as GGUF files store them (`rows` rows of
    /// `cols / 32` blocks, each a little-endian f16 step, 4 bytes of fifth bits, then 16 bytes
    /// of low nibbles), taken as they are. `None` when `bytes` is not exactly that many blocks
    /// or `cols` is not a multiple of [`BLOCK`].
    pub fn from_ggml_blocks(bytes: &[u8], rows: usize, cols: usize) -> Option<Q5_0Matrix> {
        const BLOCK_BYTES: usize = 2 + 4 + BLOCK / 2;
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let blocks = cols / BLOCK;
        if bytes.len() != rows.checked_mul(blocks)?.checked_mul(BLOCK_BYTES)? {
            return None;
        }
        let padded = rows.div_ceil(ROWS).checked_mul(ROWS)?;
        let mut m = Q5_0Matrix {
            rows,
            cols,
            quants: vec![0; padded.checked_mul(blocks)?.checked_mul(PACKED)?],
            scales: vec![0.0; padded.checked_mul(blocks)?],
        };
        for (i, block) in bytes.chunks_exact(BLOCK_BYTES).enumerate() {
            let at = block_index(i / blocks, i % blocks, blocks);
            m.scales[at] = f16::from_le_bytes([block[0], block[1]]).to_f32();
            let (nibbles, fifths) = m.places(at);
            m.quants[nibbles..nibbles + 16].copy_from_slice(&block[6..]);
            m.quants[fifths..fifths + 4].copy_from_slice(&block[2..6]);
        }
        Some(m)
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes the matrix takes in the file: 22 per 32 weights (a product reads 24: the step
    /// is kept widened to f32).
    pub fn bytes(&self) -> usize {
        self.rows * (self.cols / BLOCK) * 22
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

    /// Where block `at` (a [`block_index`]) keeps its nibbles and its fifth bits in `quants`.
    #[inline(always)]
    fn places(&self, at: usize) -> (usize, usize) {
        let (base, row) = ((at / ROWS) * ROWS * PACKED, at % ROWS);
        (base + 16 * row, base + FIFTHS + 4 * row)
    }

    /// Block `at`'s 32 values (0..32).
    #[inline(always)]
    fn values(&self, at: usize) -> [u8; BLOCK] {
        let (nibbles, fifths) = self.places(at);
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
                let d = self.scales[at];
                for (o, v) in dst.iter_mut().zip(self.values(at)) {
                    *o = (v as i32 - 16) as f32 * d;
                }
            }
        }
    }
}

impl BlockMatrix for Q5_0Matrix {
    const FORMAT: &'static str = "q5_0";

    fn shape(&self) -> (usize, usize) {
        Q5_0Matrix::shape(self)
    }

    fn matmul_t_many(isa: Isa, parts: &[&Self], x: &[f32], m: usize, out: &mut [f32]) {
        matmul_t_many(isa, parts, x, m, out)
    }
}

impl Groups for Q5_0Matrix {
    fn dims(&self) -> (usize, usize) {
        self.shape()
    }

    fn dot_group(&self, isa: Isa, g: usize, token: Token<'_>) -> [f32; ROWS] {
        let blocks = self.cols / BLOCK;
        let w = &self.quants[g * blocks * ROWS * PACKED..(g + 1) * blocks * ROWS * PACKED];
        let s = &self.scales[g * blocks * ROWS..(g + 1) * blocks * ROWS];
        match () {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller's `isa` is available (`Groups::dot_group`); the slices hold
            // one group of `blocks` blocks, the token `blocks` blocks.
            () if isa >= Isa::Avx2Fma => unsafe { simd::dot_rows(isa, w, s, token, blocks) },
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
            let blocks = self.cols / BLOCK;
            let w = &self.quants[g * blocks * ROWS * PACKED..(g + 1) * blocks * ROWS * PACKED];
            let s = &self.scales[g * blocks * ROWS..(g + 1) * blocks * ROWS];
            // SAFETY: AVX-512 F, BW and VNNI are present (`tiles`); the slices hold one group
            // of `blocks` blocks, `x` tokens of `blocks` blocks, `out` one per token.
            return unsafe { tile::dot_tile(w, s, x, out) };
        }
        dot_tile_by_token(self, isa, g, x, out)
    }
}

impl Q5_0Matrix {
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
                    .map(|(&v, &q)| (v as i32 - 16) * q as i32)
                    .sum();
                *dot += sum as f32 * (self.scales[at] * dx);
            }
        }
        dots
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub(crate) mod tile;
