//! Q6_K matrices: ggml's 256-weight super-blocks of 6-bit weights, a signed 8-bit scale per 16
//! weights and an f16 step per super-block (`weight = d * scale * (q - 32)`, `q` in 0..64),
//! repacked at load into 32-weight chunks of the same 6 bits (16 bytes of low nibbles, 8 bytes
//! of high bit pairs, in weight order; a group's 4 rows of nibbles, then their pairs) so a
//! product unpacks each chunk with a few shifts, and multiplied by tokens quantized to 8 bits per
//! 32 in integer dot products (an AVX-512 VNNI tile, else AVX2), the offset 32 taken out with the
//! token's half-block sums. A decoding step reads 6.625 bits per weight (the file: 6.5625).

use half::f16;

use crate::Isa;
use crate::blocks::{
    BLOCK, BlockMatrix, Groups, ROWS, TileTokens, Token, check_tile, dot_tile_by_token,
    matmul_t_many, vnni_tiles, with_isa,
};

/// Weights per super-block.
pub const SUPER: usize = 256;
/// Bytes of one ggml `block_q6_K`: `ql[128]`, `qh[64]`, `scales[16]`, then `d` (f16).
const GGML_BYTES: usize = 128 + 64 + 16 + 2;
/// Bytes of one row's 32-weight chunk: 16 of low nibbles, 8 of high bit pairs.
const CHUNK: usize = 24;
/// Chunks (of [`BLOCK`] weights) per super-block.
const CHUNKS: usize = SUPER / BLOCK;
/// Where a group's chunk holds its rows' high bit pairs (after their nibbles).
const PAIRS: usize = ROWS * 16;

/// A `[rows, cols]` matrix in Q6_K blocks (`cols` a multiple of [`SUPER`]), stored as the
/// block formats here are: groups of 4 rows whose 32-weight chunks interleave (group, chunk),
/// a last group short of rows padded with zeros.
#[derive(Clone)]
pub struct Q6KMatrix {
    rows: usize,
    cols: usize,
    /// `[groups, chunks, (16 bytes per row: nibbles; 8 bytes per row: pairs)]`: nibble byte
    /// `j` holds weight `j`'s low 4 bits and weight `j + 16`'s in its high half; pair byte `j`
    /// holds the high 2 bits of weights `j`, `j + 8`, `j + 16`, `j + 24` at bits 0, 2, 4, 6.
    quants: Vec<u8>,
    /// `[groups, chunks, 2, ROWS]`: the scales of the chunk's first half of 16 weights for the
    /// 4 rows, then of its second half.
    scales: Vec<i8>,
    /// `[groups, supers, ROWS]`: the super-block's step, as stored (f16), widened.
    steps: Vec<f32>,
}

impl std::fmt::Debug for Q6KMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q6KMatrix[{}, {}]", self.rows, self.cols)
    }
}

/// The 256 6-bit values (0..64) and 16 scales of one ggml `block_q6_K`, in weight order, as
/// ggml's `dequantize_row_q6_K` reads them.
pub(crate) fn ggml_values(block: &[u8]) -> ([u8; SUPER], [i8; 16], f32) {
    let (ql, rest) = block.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let (sc, d) = rest.split_at(16);
    let mut q = [0u8; SUPER];
    for n in 0..2 {
        let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
        let y = &mut q[128 * n..];
        for l in 0..32 {
            y[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
            y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    let scales = std::array::from_fn(|i| sc[i] as i8);
    (q, scales, f16::from_le_bytes([d[0], d[1]]).to_f32())
}

/// One row's 32-weight chunk of values (0..64) in this matrix's packing: its nibbles and its
/// pairs.
fn pack_chunk(values: &[u8], nibbles: &mut [u8], pairs: &mut [u8]) {
    for j in 0..16 {
        nibbles[j] = (values[j] & 0xF) | ((values[j + 16] & 0xF) << 4);
    }
    for j in 0..8 {
        pairs[j] = (0..4).fold(0u8, |b, k| b | ((values[j + 8 * k] >> 4) << (2 * k)));
    }
}

impl Q6KMatrix {
    /// The matrix whose rows are ggml `block_q6_K`s as GGUF files store them (`rows` rows of
    /// `cols / 256` blocks of 210 bytes), repacked (the same bits, no value changed). `None`
    /// when `bytes` is not exactly that many blocks or `cols` is not a multiple of [`SUPER`].
    pub fn from_ggml_blocks(bytes: &[u8], rows: usize, cols: usize) -> Option<Q6KMatrix> {
        if cols == 0 || !cols.is_multiple_of(SUPER) {
            return None;
        }
        let supers = cols / SUPER;
        if bytes.len() != rows.checked_mul(supers)?.checked_mul(GGML_BYTES)? {
            return None;
        }
        let chunks = cols / BLOCK;
        let padded = rows.div_ceil(ROWS).checked_mul(ROWS)?;
        let mut m = Q6KMatrix {
            rows,
            cols,
            quants: vec![0; padded.checked_mul(chunks)?.checked_mul(CHUNK)?],
            scales: vec![0; padded.checked_mul(chunks)?.checked_mul(2)?],
            steps: vec![0.0; padded.checked_mul(supers)?],
        };
        for (i, block) in bytes.chunks_exact(GGML_BYTES).enumerate() {
            let (r, s) = (i / supers, i % supers);
            let (g, j) = (r / ROWS, r % ROWS);
            let (values, scales, d) = ggml_values(block);
            m.steps[(g * supers + s) * ROWS + j] = d;
            for c in 0..CHUNKS {
                let at = g * chunks + s * CHUNKS + c;
                let chunk = &mut m.quants[at * ROWS * CHUNK..(at + 1) * ROWS * CHUNK];
                let (nibbles, pairs) = chunk.split_at_mut(PAIRS);
                pack_chunk(
                    &values[c * BLOCK..(c + 1) * BLOCK],
                    &mut nibbles[16 * j..16 * j + 16],
                    &mut pairs[8 * j..8 * j + 8],
                );
                m.scales[at * 2 * ROWS + j] = scales[2 * c];
                m.scales[at * 2 * ROWS + ROWS + j] = scales[2 * c + 1];
            }
        }
        Some(m)
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes the matrix takes in the file: 210 per 256 weights (a product reads 212).
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

    /// Row `r`'s chunk `c` unpacked to its 32 values (0..64), its halves' scales and its
    /// step.
    fn chunk(&self, r: usize, c: usize) -> ([u8; BLOCK], [i8; 2], f32) {
        let (g, j) = (r / ROWS, r % ROWS);
        let at = g * (self.cols / BLOCK) + c;
        let chunk = &self.quants[at * ROWS * CHUNK..(at + 1) * ROWS * CHUNK];
        let (nibbles, pairs) = (&chunk[16 * j..16 * j + 16], &chunk[PAIRS + 8 * j..]);
        let values = std::array::from_fn(|i| {
            let low = if i < 16 {
                nibbles[i] & 0xF
            } else {
                nibbles[i - 16] >> 4
            };
            let high = (pairs[i % 8] >> (2 * (i / 8))) & 3;
            low | (high << 4)
        });
        let scales = [
            self.scales[at * 2 * ROWS + j],
            self.scales[at * 2 * ROWS + ROWS + j],
        ];
        let step = self.steps[(g * (self.cols / SUPER) + c / CHUNKS) * ROWS + j];
        (values, scales, step)
    }

    /// The dequantization loop (compiled per ISA by [`Groups::dequantize_rows`]).
    #[inline(always)]
    fn dequantize_rows_with(&self, first: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            for (c, dst) in row.chunks_exact_mut(BLOCK).enumerate() {
                let (values, scales, d) = self.chunk(first + i, c);
                let steps = [d * scales[0] as f32, d * scales[1] as f32];
                for (j, (o, &v)) in dst.iter_mut().zip(&values).enumerate() {
                    *o = steps[j / 16] * (v as i32 - 32) as f32;
                }
            }
        }
    }

    /// Group `g`'s slices: quants, scales, steps.
    fn group(&self, g: usize) -> (&[u8], &[i8], &[f32]) {
        let chunks = self.cols / BLOCK;
        let q = chunks * ROWS * CHUNK;
        let s = chunks * 2 * ROWS;
        let d = (self.cols / SUPER) * ROWS;
        (
            &self.quants[g * q..(g + 1) * q],
            &self.scales[g * s..(g + 1) * s],
            &self.steps[g * d..(g + 1) * d],
        )
    }
}

impl BlockMatrix for Q6KMatrix {
    const FORMAT: &'static str = "q6_k";

    fn shape(&self) -> (usize, usize) {
        Q6KMatrix::shape(self)
    }

    fn matmul_t_many(isa: Isa, parts: &[&Self], x: &[f32], m: usize, out: &mut [f32]) {
        matmul_t_many(isa, parts, x, m, out)
    }
}

impl Groups for Q6KMatrix {
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

impl Q6KMatrix {
    /// Group `g`'s rows dotted with `x`, in plain Rust.
    fn dot_group_portable(&self, g: usize, x: Token<'_>) -> [f32; ROWS] {
        let mut dots = [0f32; ROWS];
        for (c, (xb, dx)) in x.quants.chunks_exact(BLOCK).zip(x.scales).enumerate() {
            for (r, dot) in dots.iter_mut().enumerate() {
                let (values, scales, d) = self.chunk(g * ROWS + r, c);
                let halves: [i32; 2] = std::array::from_fn(|h| {
                    (0..16)
                        .map(|i| (values[16 * h + i] as i32 - 32) * xb[16 * h + i] as i32)
                        .sum::<i32>()
                        * scales[h] as i32
                });
                *dot += (halves[0] + halves[1]) as f32 * (d * dx);
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
