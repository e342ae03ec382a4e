//! Products with Q8_0 matrices (the shared block product, [`crate::blocks`]): one matrix, or
//! several sharing an input (q/k/v, gate/up) in one pass whose outputs sit side by side.

use super::{BLOCK, Q8_0Matrix, ROWS};
use crate::Isa;
use crate::blocks::{
    BlockMatrix, Groups, TileTokens, Token, check_tile, dot_tile_by_token, matmul_t_many,
    vnni_tiles,
};

impl Q8_0Matrix {
    /// `out = x W^T`: `x` `[m, cols]`, `out` `[m, rows]`, on the kernel threads. Each token is
    /// quantized per block to 8 bits (its step kept in f32) and multiplied in integer dot
    /// products, which read the weights at memory speed: from two tokens on, in tiles that
    /// read each block once for several tokens on AVX-512 VNNI. Without VNNI, from
    /// [`super::WIDEN_TOKENS`] tokens on, where the products are bound by arithmetic, blocks of
    /// rows are dequantized and multiplied by the float matrix product instead.
    ///
    /// # Panics
    /// If the slice lengths do not agree with `m` and the matrix's shape.
    pub fn matmul_t(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32]) {
        Self::matmul_t_many(isa, &[self], x, m, out)
    }

    /// The products of `x` with each of `parts` (matrices of one width), side by side:
    /// `out` `[m, Σ rows]`, part `i`'s columns after part `i - 1`'s. One pass, as
    /// [`Q8_0Matrix::matmul_t`] computes one: the tokens are quantized (or packed) once and
    /// the parts' rows shared out to the kernel threads together, so sibling projections of
    /// one input cost one dispatch, not one each.
    ///
    /// # Panics
    /// If the parts' widths differ or the slice lengths do not agree with `m` and the shapes.
    pub fn matmul_t_many(isa: Isa, parts: &[&Q8_0Matrix], x: &[f32], m: usize, out: &mut [f32]) {
        matmul_t_many(isa, parts, x, m, out)
    }
}

impl BlockMatrix for Q8_0Matrix {
    const FORMAT: &'static str = "q8_0";

    fn shape(&self) -> (usize, usize) {
        Q8_0Matrix::shape(self)
    }

    fn matmul_t_many(isa: Isa, parts: &[&Self], x: &[f32], m: usize, out: &mut [f32]) {
        matmul_t_many(isa, parts, x, m, out)
    }
}

impl Groups for Q8_0Matrix {
    fn dims(&self) -> (usize, usize) {
        self.shape()
    }

    fn dot_group(&self, isa: Isa, g: usize, token: Token<'_>) -> [f32; ROWS] {
        let blocks = self.cols / BLOCK;
        let w = &self.quants[g * blocks * ROWS * BLOCK..(g + 1) * blocks * ROWS * BLOCK];
        let s = &self.scales[g * blocks * ROWS..(g + 1) * blocks * ROWS];
        let x = (token.quants, token.scales);
        match () {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller's `isa` is available (`Groups::dot_group`); the slices hold
            // one group of `blocks` blocks.
            () if isa >= Isa::Avx2Fma => unsafe { super::simd::dot_rows(isa, w, s, x, blocks) },
            () => dot_rows_portable(w, s, x),
        }
    }

    fn dequantize_rows(&self, isa: Isa, first: usize, out: &mut [f32]) {
        Q8_0Matrix::dequantize_rows(self, isa, first, out)
    }

    fn tiles(&self, isa: Isa) -> bool {
        vnni_tiles(isa)
    }

    fn dot_tile(&self, isa: Isa, g: usize, x: &TileTokens<'_>, out: &mut [[f32; ROWS]]) {
        check_tile(x, self.cols, out);
        // One token reads the weights at memory speed either way; the per-block start of the
        // tile pays off from two.
        #[cfg(target_arch = "x86_64")]
        if out.len() > 1 && self.tiles(isa) {
            let blocks = self.cols / BLOCK;
            let w = &self.quants[g * blocks * ROWS * BLOCK..(g + 1) * blocks * ROWS * BLOCK];
            let s = &self.scales[g * blocks * ROWS..(g + 1) * blocks * ROWS];
            // SAFETY: AVX-512 F, BW and VNNI are present (`tiles`); the slices hold one group
            // of `blocks` blocks, `x` tokens of `blocks` blocks, `out` one per token.
            return unsafe { super::tile::dot_tile(w, s, x, out) };
        }
        dot_tile_by_token(self, isa, g, x, out)
    }
}

/// One group's `ROWS` rows (`w`, steps `s`) dotted with one quantized token, in plain Rust.
pub(super) fn dot_rows_portable(w: &[i8], s: &[f32], (qx, sx): (&[i8], &[f32])) -> [f32; ROWS] {
    let mut dots = [0f32; ROWS];
    for (b, (xb, dx)) in qx.chunks_exact(BLOCK).zip(sx).enumerate() {
        for (j, dot) in dots.iter_mut().enumerate() {
            let at = b * ROWS + j;
            let wb = &w[at * BLOCK..(at + 1) * BLOCK];
            let sum: i32 = wb.iter().zip(xb).map(|(&a, &c)| a as i32 * c as i32).sum();
            *dot += sum as f32 * (s[at] * dx);
        }
    }
    dots
}
