//! Q4_0 matrices: weights in 4-bit blocks of 32 with one f16 step each (ggml's Q4_0: the
//! weight is `step * (q - 8)`, `q` in 0..16), multiplied by tokens quantized to 8 bits per
//! block in 32-bit integer dot products (AVX-512 VNNI, else AVX2's multiply-adds), the offset
//! 8 taken out once per block with the token block's sum. A decoding step reads 20 bytes per
//! 32 weights (the file: 18; the step is kept widened to f32).

use half::f16;

use crate::Isa;
use crate::blocks::{
    BLOCK, BlockMatrix, Groups, ROWS, TileTokens, Token, block_index, check_tile,
    dot_tile_by_token, matmul_t_many, vnni_tiles, with_isa,
};

/// Bytes of one row's quants in a block: two 4-bit weights per byte.
const PACKED: usize = BLOCK / 2;

/// A `[rows, cols]` matrix in Q4_0 blocks (`cols` a multiple of [`BLOCK`]), stored as the block
/// formats here are: groups of 4 rows whose blocks interleave (group, block, row), so a product
/// reads each group as one sequential stream; a last group short of rows is padded with zeros.
/// Byte `j` of a block holds weight `j` in its low nibble and weight `j + 16` in its high one,
/// as ggml stores them.
#[derive(Clone)]
pub struct Q4_0Matrix {
    rows: usize,
    cols: usize,
    /// `[groups, blocks, ROWS, PACKED]`.
    quants: Vec<u8>,
    /// `[groups, blocks, ROWS]`: each block's step, as stored (f16), widened.
    scales: Vec<f32>,
}

impl std::fmt::Debug for Q4_0Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q4_0Matrix[{}, {}]", self.rows, self.cols)
    }
}

/// Quantizes one block as ggml's reference does: the step is the weight of largest magnitude
/// over -8 (so it maps to 0), `q = min(15, trunc(v / step + 8.5))`; returns the step.
fn quantize_block(values: &[f32], packed: &mut [u8]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in values {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    // A NaN weight makes the step NaN, as the comparisons above would skip it.
    let d = if values.iter().any(|v| v.is_nan()) {
        f32::NAN
    } else {
        max / -8.0
    };
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
    for (j, byte) in packed.iter_mut().enumerate() {
        *byte = q(values[j]) | (q(values[j + PACKED]) << 4);
    }
    d
}

impl Q4_0Matrix {
    /// A `[rows, cols]` matrix of zeros; `None` when `cols` is not a multiple of [`BLOCK`] or
    /// the size overflows.
    fn zeros(rows: usize, cols: usize) -> Option<Q4_0Matrix> {
        if !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let padded = rows.div_ceil(ROWS).checked_mul(ROWS)?;
        Some(Q4_0Matrix {
            rows,
            cols,
            quants: vec![0x88; padded.checked_mul(cols / 2)?],
            scales: vec![0f32; padded.checked_mul(cols / BLOCK)?],
        })
    }

    /// Quantizes `w` (`[rows, cols]` row-major) as ggml's reference quantizer does; `None` when
    /// `cols` is not a multiple of [`BLOCK`] or `w` is not `rows x cols`.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Option<Q4_0Matrix> {
        if Some(w.len()) != rows.checked_mul(cols) {
            return None;
        }
        let mut m = Self::zeros(rows, cols)?;
        let blocks = cols / BLOCK;
        for (r, row) in w.chunks_exact(cols.max(1)).enumerate() {
            for (b, values) in row.chunks_exact(BLOCK).enumerate() {
                let at = block_index(r, b, blocks);
                let d = quantize_block(values, &mut m.quants[at * PACKED..(at + 1) * PACKED]);
                m.scales[at] = f16::from_f32(d).to_f32();
            }
        }
        Some(m)
    }

    /// The matrix whose rows are ggml `block_q4_0`s as GGUF files store them (`rows` rows of
    /// `cols / 32` blocks, each a little-endian f16 step then 16 bytes of packed weights),
    /// taken as they are. `None` when `bytes` is not exactly that many blocks or `cols` is not
    /// a multiple of [`BLOCK`].
    pub fn from_ggml_blocks(bytes: &[u8], rows: usize, cols: usize) -> Option<Q4_0Matrix> {
        const BLOCK_BYTES: usize = 2 + PACKED;
        if cols == 0 {
            return None;
        }
        let mut m = Self::zeros(rows, cols)?;
        let blocks = cols / BLOCK;
        if bytes.len() != rows.checked_mul(blocks)?.checked_mul(BLOCK_BYTES)? {
            return None;
        }
        for (i, block) in bytes.chunks_exact(BLOCK_BYTES).enumerate() {
            let at = block_index(i / blocks, i % blocks, blocks);
            m.scales[at] = f16::from_le_bytes([block[0], block[1]]).to_f32();
            m.quants[at * PACKED..(at + 1) * PACKED].copy_from_slice(&block[2..]);
        }
        Some(m)
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes the matrix takes in the file: half a byte per weight and an f16 step per block.
    pub fn bytes(&self) -> usize {
        self.rows * self.cols / 2 + 2 * self.rows * (self.cols / BLOCK)
    }

    /// The weights the blocks stand for, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows_with(0, &mut out);
        out
    }

    /// `out = x W^T`: `x` `[m, cols]`, `out` `[m, rows]`, on the kernel threads, in integer
    /// dot products (as [`crate::q8_0::Q8_0Matrix::matmul_t`]: tiles of tokens on AVX-512
    /// VNNI, else dequantized rows and the float product for many tokens).
    ///
    /// # Panics
    /// If the slice lengths do not agree with `m` and the matrix's shape.
    pub fn matmul_t(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32]) {
        matmul_t_many(isa, &[self], x, m, out)
    }

    /// The products of `x` with each of `parts` (matrices of one width), side by side, in one
    /// pass (as [`crate::q8_0::Q8_0Matrix::matmul_t_many`]).
    ///
    /// # Panics
    /// If the parts' widths differ or the slice lengths do not agree with `m` and the shapes.
    pub fn matmul_t_many(isa: Isa, parts: &[&Q4_0Matrix], x: &[f32], m: usize, out: &mut [f32]) {
        matmul_t_many(isa, parts, x, m, out)
    }

    /// The dequantization loop (compiled per ISA by [`Groups::dequantize_rows`]).
    #[inline(always)]
    fn dequantize_rows_with(&self, first: usize, out: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        for (i, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            for (b, dst) in row.chunks_exact_mut(BLOCK).enumerate() {
                let at = block_index(first + i, b, blocks);
                let d = self.scales[at];
                let packed = &self.quants[at * PACKED..(at + 1) * PACKED];
                let (lo, hi) = dst.split_at_mut(PACKED);
                for ((l, h), &byte) in lo.iter_mut().zip(hi).zip(packed) {
                    *l = ((byte & 0x0F) as i32 - 8) as f32 * d;
                    *h = ((byte >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
    }
}

impl BlockMatrix for Q4_0Matrix {
    const FORMAT: &'static str = "q4_0";

    fn shape(&self) -> (usize, usize) {
        Q4_0Matrix::shape(self)
    }

    fn matmul_t_many(isa: Isa, parts: &[&Self], x: &[f32], m: usize, out: &mut [f32]) {
        matmul_t_many(isa, parts, x, m, out)
    }
}

impl Groups for Q4_0Matrix {
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
            () => dot_rows_portable(w, s, token),
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

/// One group's `ROWS` rows (`w`, steps `s`) dotted with one quantized token, in plain Rust.
fn dot_rows_portable(w: &[u8], s: &[f32], x: Token<'_>) -> [f32; ROWS] {
    let mut dots = [0f32; ROWS];
    for (b, (xb, dx)) in x.quants.chunks_exact(BLOCK).zip(x.scales).enumerate() {
        for (j, dot) in dots.iter_mut().enumerate() {
            let at = b * ROWS + j;
            let packed = &w[at * PACKED..(at + 1) * PACKED];
            let sum: i32 = packed
                .iter()
                .enumerate()
                .map(|(i, &byte)| {
                    ((byte & 0x0F) as i32 - 8) * xb[i] as i32
                        + ((byte >> 4) as i32 - 8) * xb[i + PACKED] as i32
                })
                .sum();
            *dot += sum as f32 * (s[at] * dx);
        }
    }
    dots
}

#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod tile;
