//! Q4_K matrices: ggml's 256-weight super-blocks of 4-bit weights in eight sub-blocks of 32,
//! each with a 6-bit scale and a 6-bit min, and two f16 steps per super-block (`weight =
//! d * scale * q - dmin * min`, `q` in 0..16). Repacked at load into the 32-weight blocks of the
//! 4-bit formats here (Q4_0's nibble order, groups of 4 rows), the 12 bytes of packed scales
//! and mins unpacked to a byte each and the two steps widened, so a product reads 4.75 bits per
//! weight (the file: 4.5) and shares Q4_0's integer tile on AVX-512 VNNI. Tokens are
//! quantized to 8 bits per 32; each sub-block's min is taken out with the token block's sum.

use half::f16;

use crate::Isa;
use crate::blocks::{
    BLOCK, BlockMatrix, Groups, ROWS, TileTokens, Token, block_index, check_tile,
    dot_tile_by_token, matmul_t_many, vnni_tiles, with_isa,
};

/// Weights per super-block.
pub const SUPER: usize = 256;
/// Sub-blocks (of [`BLOCK`] weights) per super-block.
const SUBS: usize = SUPER / BLOCK;
/// Bytes of one ggml `block_q4_K`: `d`, `dmin` (f16), `scales[12]`, `qs[128]`.
const GGML_BYTES: usize = 4 + 12 + 128;
/// Bytes of one row's block: two 4-bit weights per byte.
const PACKED: usize = BLOCK / 2;

/// A `[rows, cols]` matrix in Q4_K blocks (`cols` a multiple of [`SUPER`]), stored in groups of
/// 4 rows whose blocks interleave (group, block, row), as Q4_0's; a last group short of rows is
/// padded with zeros.
#[derive(Clone)]
pub struct Q4KMatrix {
    rows: usize,
    cols: usize,
    /// `[groups, blocks, ROWS, PACKED]`: byte `j` holds weight `j` in its low nibble and weight
    /// `j + 16` in its high one.
    quants: Vec<u8>,
    /// `[groups, blocks, 2, ROWS]`: each block's 6-bit scale for the 4 rows, then its min.
    subs: Vec<u8>,
    /// `[groups, supers, 2, ROWS]`: each super-block's `d` for the 4 rows, then its `dmin`.
    steps: Vec<f32>,
}

impl std::fmt::Debug for Q4KMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q4KMatrix[{}, {}]", self.rows, self.cols)
    }
}

/// Sub-block `j`'s 6-bit scale and min from ggml's 12 packed bytes (`get_scale_min_k4`): the
/// first four whole in the low 6 bits of bytes `j` and `j + 4`, the last four from the nibbles
/// of bytes `j + 4` and the top bits of bytes `j - 4` and `j`.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

impl Q4KMatrix {
    /// The matrix whose rows are ggml `block_q4_K`s as GGUF files store them (`rows` rows of
    /// `cols / 256` blocks of 144 bytes), repacked (no value changed). `None` when `bytes` is
    /// not exactly that many blocks or `cols` is not a multiple of [`SUPER`].
    pub fn from_ggml_blocks(bytes: &[u8], rows: usize, cols: usize) -> Option<Q4KMatrix> {
        if cols == 0 || !cols.is_multiple_of(SUPER) {
            return None;
        }
        let (supers, blocks) = (cols / SUPER, cols / BLOCK);
        if bytes.len() != rows.checked_mul(supers)?.checked_mul(GGML_BYTES)? {
            return None;
        }
        let padded = rows.div_ceil(ROWS).checked_mul(ROWS)?;
        let mut m = Q4KMatrix {
            rows,
            cols,
            quants: vec![0; padded.checked_mul(blocks)?.checked_mul(PACKED)?],
            subs: vec![0; padded.checked_mul(blocks)?.checked_mul(2)?],
            steps: vec![0.0; padded.checked_mul(supers)?.checked_mul(2)?],
        };
        for (i, block) in bytes.chunks_exact(GGML_BYTES).enumerate() {
            let (r, s) = (i / supers, i % supers);
            let (g, j) = (r / ROWS, r % ROWS);
            let step = |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
            let at = (g * supers + s) * 2 * ROWS + j;
            (m.steps[at], m.steps[at + ROWS]) = (step(0), step(2));
            for c in 0..SUBS {
                let b = s * SUBS + c;
                let at = (g * blocks + b) * 2 * ROWS + j;
                (m.subs[at], m.subs[at + ROWS]) = scale_min(c, &block[4..16]);
                // ggml: sub-block `2 p` in the low nibbles of `qs[32 p..32 p + 32]`, `2 p + 1`
                // in the high ones.
                let qs = &block[16 + 32 * (c / 2)..16 + 32 * (c / 2) + 32];
                let value = |l: usize| (qs[l] >> (4 * (c % 2))) & 0xF;
                let at = block_index(r, b, blocks) * PACKED;
                for (l, byte) in m.quants[at..at + PACKED].iter_mut().enumerate() {
                    *byte = value(l) | (value(l + PACKED) << 4);
                }
            }
        }
        Some(m)
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes the matrix takes in the file: 144 per 256 weights.
    pub fn bytes(&self) -> usize {
        self.rows * (self.cols / SUPER) * GGML_BYTES
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

    /// Row `r`'s step and min of block `b`: `(d * scale, dmin * min)`, as ggml computes them.
    #[inline(always)]
    fn step_min(&self, r: usize, b: usize) -> (f32, f32) {
        let (g, j) = (r / ROWS, r % ROWS);
        let (supers, blocks) = (self.cols / SUPER, self.cols / BLOCK);
        let steps = (g * supers + b / SUBS) * 2 * ROWS + j;
        let subs = (g * blocks + b) * 2 * ROWS + j;
        (
            self.steps[steps] * self.subs[subs] as f32,
            self.steps[steps + ROWS] * self.subs[subs + ROWS] as f32,
        )
    }

    /// The dequantization loop (compiled per ISA by [`Groups::dequantize_rows`]).
    #[inline(always)]
    fn dequantize_rows_with(&self, first: usize, out: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        for (i, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            for (b, dst) in row.chunks_exact_mut(BLOCK).enumerate() {
                let at = block_index(first + i, b, blocks);
                let (step, min) = self.step_min(first + i, b);
                let packed = &self.quants[at * PACKED..(at + 1) * PACKED];
                let (lo, hi) = dst.split_at_mut(PACKED);
                for ((l, h), &byte) in lo.iter_mut().zip(hi).zip(packed) {
                    *l = step * (byte & 0x0F) as f32 - min;
                    *h = step * (byte >> 4) as f32 - min;
                }
            }
        }
    }

    /// Group `g`'s slices: quants, scales and mins, steps.
    fn group(&self, g: usize) -> (&[u8], &[u8], &[f32]) {
        let (supers, blocks) = (self.cols / SUPER, self.cols / BLOCK);
        let q = blocks * ROWS * PACKED;
        let s = blocks * 2 * ROWS;
        let d = supers * 2 * ROWS;
        (
            &self.quants[g * q..(g + 1) * q],
            &self.subs[g * s..(g + 1) * s],
            &self.steps[g * d..(g + 1) * d],
        )
    }
}

impl BlockMatrix for Q4KMatrix {
    const FORMAT: &'static str = "q4_k";

    fn shape(&self) -> (usize, usize) {
        Q4KMatrix::shape(self)
    }

    fn matmul_t_many(isa: Isa, parts: &[&Self], x: &[f32], m: usize, out: &mut [f32]) {
        matmul_t_many(isa, parts, x, m, out)
    }
}

impl Groups for Q4KMatrix {
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
            // one group, the token `cols / 32` blocks.
            () if isa >= Isa::Avx2Fma => unsafe { simd::dot_rows(isa, self.group(g), token) },
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
            // SAFETY: AVX-512 F, BW and VNNI are present (`tiles`); the slices hold one
            // group, `x` tokens of `cols / 32` blocks, `out` one per token.
            return unsafe { tile::dot_tile(self.group(g), x, out) };
        }
        dot_tile_by_token(self, isa, g, x, out)
    }
}

impl Q4KMatrix {
    /// Group `g`'s rows dotted with `x`, in plain Rust.
    fn dot_group_portable(&self, g: usize, x: Token<'_>) -> [f32; ROWS] {
        let blocks = self.cols / BLOCK;
        let mut dots = [0f32; ROWS];
        for (b, (xb, dx)) in x.quants.chunks_exact(BLOCK).zip(x.scales).enumerate() {
            for (j, dot) in dots.iter_mut().enumerate() {
                let r = g * ROWS + j;
                let at = block_index(r, b, blocks) * PACKED;
                let packed = &self.quants[at..at + PACKED];
                let sum: i32 = packed
                    .iter()
                    .enumerate()
                    .map(|(i, &byte)| {
                        (byte & 0x0F) as i32 * xb[i] as i32
                            + (byte >> 4) as i32 * xb[i + PACKED] as i32
                    })
                    .sum();
                let (step, min) = self.step_min(r, b);
                *dot += step * dx * sum as f32 - min * dx * x.sums[b] as f32;
            }
        }
        dots
    }
}

#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod tile;
