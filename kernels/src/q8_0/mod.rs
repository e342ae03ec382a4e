//! Q8_0 matrices: weights in 8-bit blocks of 32 with one scale each (ggml's Q8_0: the scale is
//! the block's `amax / 127` rounded to f16), multiplied by tokens quantized the same way per
//! block, in 32-bit integer dot products: AVX-512 VNNI where present, AVX2's 8-bit
//! multiply-adds otherwise. A decoding step reads 36 bytes per 32 weights (the file: 34; the
//! step is kept as f32), instead of 128.

use half::f16;

use super::Isa;

pub use crate::blocks::{BLOCK, WIDEN_TOKENS};
use crate::blocks::{ROWS, block_index, quantize_block, with_isa};

/// A `[rows, cols]` matrix in Q8_0 blocks (`cols` a multiple of [`BLOCK`]), stored in groups of
/// `ROWS` rows whose blocks interleave (group, block, row), so a product reads each group as
/// one sequential stream; a last group short of rows is padded with zeros.
#[derive(Clone)]
pub struct Q8_0Matrix {
    rows: usize,
    cols: usize,
    /// `[groups, blocks, ROWS, BLOCK]`.
    quants: Vec<i8>,
    /// `[groups, blocks, ROWS]`: each block's step, as stored (f16), widened.
    scales: Vec<f32>,
}

impl std::fmt::Debug for Q8_0Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q8_0Matrix[{}, {}]", self.rows, self.cols)
    }
}

impl Q8_0Matrix {
    /// Quantizes `w` (`[rows, cols]` row-major).
    ///
    /// # Panics
    /// If `cols` is not a multiple of [`BLOCK`] or `w` is not `rows x cols` (callers check
    /// both: `Linear::quantize` reports them as errors).
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Q8_0Matrix {
        assert!(
            cols.is_multiple_of(BLOCK) && Some(w.len()) == rows.checked_mul(cols),
            "Q8_0Matrix::quantize: {} values are not {rows} rows of {cols} (a multiple of {BLOCK})",
            w.len()
        );
        let mut m = Self::zeros(rows, cols).expect("a matrix the size of `w`");
        m.quantize_rows(0, w);
        m
    }

    /// A `[rows, cols]` matrix of zeros, for [`Q8_0Matrix::quantize_rows`] to fill a few rows
    /// at a time; `None` when `cols` is not a multiple of [`BLOCK`] or the size overflows.
    pub fn zeros(rows: usize, cols: usize) -> Option<Q8_0Matrix> {
        if !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let padded = rows.div_ceil(ROWS).checked_mul(ROWS)?;
        Some(Q8_0Matrix {
            rows,
            cols,
            quants: vec![0i8; padded.checked_mul(cols)?],
            scales: vec![0f32; padded.checked_mul(cols / BLOCK)?],
        })
    }

    /// Quantizes `w` (whole rows, row-major) into rows `first..` of the matrix.
    ///
    /// # Panics
    /// If `w` is not whole rows or runs past the last row.
    pub fn quantize_rows(&mut self, first: usize, w: &[f32]) {
        let cols = self.cols;
        let n = w.len() / cols.max(1);
        assert!(
            w.len() == n * cols && first + n <= self.rows,
            "Q8_0Matrix::quantize_rows: {} values at row {first} are not whole rows of [{}, {cols}]",
            w.len(),
            self.rows
        );
        let blocks = cols / BLOCK;
        for (i, row) in w.chunks_exact(cols.max(1)).enumerate() {
            for (b, values) in row.chunks_exact(BLOCK).enumerate() {
                let at = block_index(first + i, b, blocks);
                let d = quantize_block(values, &mut self.quants[at * BLOCK..(at + 1) * BLOCK]);
                self.scales[at] = f16::from_f32(d).to_f32();
            }
        }
    }

    /// The matrix whose rows are ggml `block_q8_0`s as GGUF files store them (`rows` rows of
    /// `cols / 32` blocks, each a little-endian f16 scale then 32 signed bytes), taken as they
    /// are: no value is rounded again. `None` when `bytes` is not exactly that many blocks or
    /// `cols` is not a multiple of [`BLOCK`].
    pub fn from_ggml_blocks(bytes: &[u8], rows: usize, cols: usize) -> Option<Q8_0Matrix> {
        const BLOCK_BYTES: usize = 2 + BLOCK;
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let blocks = cols / BLOCK;
        if bytes.len() != rows.checked_mul(blocks)?.checked_mul(BLOCK_BYTES)? {
            return None;
        }
        let padded = rows.div_ceil(ROWS).checked_mul(ROWS)?;
        let mut quants = vec![0i8; padded.checked_mul(cols)?];
        let mut scales = vec![0f32; padded.checked_mul(blocks)?];
        for (i, block) in bytes.chunks_exact(BLOCK_BYTES).enumerate() {
            let (r, b) = (i / blocks, i % blocks);
            let at = block_index(r, b, blocks);
            scales[at] = f16::from_le_bytes([block[0], block[1]]).to_f32();
            for (q, &byte) in quants[at * BLOCK..(at + 1) * BLOCK]
                .iter_mut()
                .zip(&block[2..])
            {
                *q = byte as i8;
            }
        }
        Some(Q8_0Matrix {
            rows,
            cols,
            quants,
            scales,
        })
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes the matrix reads per product: one byte per weight and an f16 scale per block.
    pub fn bytes(&self) -> usize {
        self.rows * self.cols + 2 * self.rows * (self.cols / BLOCK)
    }

    /// The weights the blocks stand for, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows(Isa::detect(), 0, &mut out);
        out
    }

    /// Writes rows `first..first + out.len() / cols` of the weights the blocks stand for into
    /// `out`, row-major, vectorised for `isa`.
    pub(crate) fn dequantize_rows(&self, isa: Isa, first: usize, out: &mut [f32]) {
        with_isa(isa, || self.dequantize_rows_with(first, out))
    }

    /// The dequantization loop (compiled per ISA by its callers' `target_feature`).
    #[inline(always)]
    fn dequantize_rows_with(&self, first: usize, out: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        for (i, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            for (b, dst) in row.chunks_exact_mut(BLOCK).enumerate() {
                let at = block_index(first + i, b, blocks);
                let d = self.scales[at];
                let q = &self.quants[at * BLOCK..(at + 1) * BLOCK];
                for (o, &q) in dst.iter_mut().zip(q) {
                    *o = q as f32 * d;
                }
            }
        }
    }
}

mod product;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod tile;
