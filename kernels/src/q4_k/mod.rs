//! Q4_K matrices: ggml's 256-weight super-blocks of 4-bit weights in eight sub-blocks of 32,
//! each with a 6-bit scale and a 6-bit min, and two f16 steps per super-block (`weight =
//! d * scale * q - dmin * min`, `q` in 0..16). The 4-bit quants are kept as the file stores them;
//! the 12 bytes of packed scales and mins are unpacked at load to a byte each and the two steps
//! widened, so a product reads 4.75 bits per weight (the file: 4.5). Tokens are quantized to 8
//! bits per 32 and multiplied in integer dot products (AVX-512 VNNI, else AVX2); each
//! sub-block's min is taken out with the token block's sum.

use half::f16;

use crate::Isa;
use crate::blocks::{BLOCK, BlockMatrix, Groups, ROWS, Token, matmul_t_many, with_isa};

/// Weights per super-block.
pub const SUPER: usize = 256;
/// Sub-blocks (of [`BLOCK`] weights) per super-block.
const SUBS: usize = SUPER / BLOCK;
/// Bytes of one ggml `block_q4_K`: `d`, `dmin` (f16), `scales[12]`, `qs[128]`.
const GGML_BYTES: usize = 4 + 12 + 128;
/// Bytes of one row's super-block here: `qs[128]` as ggml stores them, the eight scales, the
/// eight mins, then `d` and `dmin` as little-endian f32.
const RECORD: usize = 128 + 2 * SUBS + 8;
/// Where a record's scales, mins and steps start.
const SCALES: usize = 128;
const MINS: usize = SCALES + SUBS;
const STEPS: usize = MINS + SUBS;

/// A `[rows, cols]` matrix in Q4_K blocks (`cols` a multiple of [`SUPER`]), stored in groups of
/// 4 rows whose super-blocks interleave (group, super-block, row), so a product reads each group
/// as one sequential stream; a last group short of rows is padded with zeros.
#[derive(Clone)]
pub struct Q4KMatrix {
    rows: usize,
    cols: usize,
    /// `[groups, supers, ROWS, RECORD]`. In `qs`, bytes `32 j..32 j + 32` hold sub-block
    /// `2 j`'s weights in their low nibbles and sub-block `2 j + 1`'s in their high ones.
    records: Vec<u8>,
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

/// Reads the little-endian f32 at `at`.
#[inline(always)]
fn f32_at(bytes: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl Q4KMatrix {
    /// The matrix whose rows are ggml `block_q4_K`s as GGUF files store them (`rows` rows of
    /// `cols / 256` blocks of 144 bytes), the scales and mins unpacked (no value changed).
    /// `None` when `bytes` is not exactly that many blocks or `cols` is not a multiple of
    /// [`SUPER`].
    pub fn from_ggml_blocks(bytes: &[u8], rows: usize, cols: usize) -> Option<Q4KMatrix> {
        if cols == 0 || !cols.is_multiple_of(SUPER) {
            return None;
        }
        let supers = cols / SUPER;
        if bytes.len() != rows.checked_mul(supers)?.checked_mul(GGML_BYTES)? {
            return None;
        }
        let padded = rows.div_ceil(ROWS).checked_mul(ROWS)?;
        let mut m = Q4KMatrix {
            rows,
            cols,
            records: vec![0; padded.checked_mul(supers)?.checked_mul(RECORD)?],
        };
        for (i, block) in bytes.chunks_exact(GGML_BYTES).enumerate() {
            let (r, s) = (i / supers, i % supers);
            let at = m.record(r, s);
            let rec = &mut m.records[at..at + RECORD];
            let step = |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
            rec[..SCALES].copy_from_slice(&block[16..]);
            for j in 0..SUBS {
                (rec[SCALES + j], rec[MINS + j]) = scale_min(j, &block[4..16]);
            }
            rec[STEPS..STEPS + 4].copy_from_slice(&step(0).to_le_bytes());
            rec[STEPS + 4..].copy_from_slice(&step(2).to_le_bytes());
        }
        Some(m)
    }

    /// Where row `r`'s super-block `s` starts in `records`.
    fn record(&self, r: usize, s: usize) -> usize {
        let supers = self.cols / SUPER;
        (((r / ROWS) * supers + s) * ROWS + r % ROWS) * RECORD
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

    /// The dequantization loop (compiled per ISA by [`Groups::dequantize_rows`]).
    #[inline(always)]
    fn dequantize_rows_with(&self, first: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            for (s, dst) in row.chunks_exact_mut(SUPER).enumerate() {
                let at = self.record(first + i, s);
                let rec = &self.records[at..at + RECORD];
                let (d, dmin) = (f32_at(rec, STEPS), f32_at(rec, STEPS + 4));
                for (pair, dst) in dst.chunks_exact_mut(2 * BLOCK).enumerate() {
                    let qs = &rec[32 * pair..32 * pair + 32];
                    let (lo, hi) = dst.split_at_mut(BLOCK);
                    let (j0, j1) = (SCALES + 2 * pair, SCALES + 2 * pair + 1);
                    let (s0, s1) = (d * rec[j0] as f32, d * rec[j1] as f32);
                    let (m0, m1) = (dmin * rec[j0 + SUBS] as f32, dmin * rec[j1 + SUBS] as f32);
                    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(qs) {
                        *l = s0 * (q & 0xF) as f32 - m0;
                        *h = s1 * (q >> 4) as f32 - m1;
                    }
                }
            }
        }
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
        let supers = self.cols / SUPER;
        let n = supers * ROWS * RECORD;
        let w = &self.records[g * n..(g + 1) * n];
        match () {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller's `isa` is available (`Groups::dot_group`); `w` holds one
            // group of `supers` super-blocks, the token `supers * 8` blocks.
            () if isa >= Isa::Avx2Fma => unsafe { simd::dot_rows(isa, w, token, supers) },
            () => dot_rows_portable(w, token),
        }
    }

    fn dequantize_rows(&self, isa: Isa, first: usize, out: &mut [f32]) {
        with_isa(isa, || self.dequantize_rows_with(first, out))
    }
}

/// One group's `ROWS` rows (records `w`, interleaved by super-block) dotted with one quantized
/// token, in plain Rust.
fn dot_rows_portable(w: &[u8], x: Token<'_>) -> [f32; ROWS] {
    let mut dots = [0f32; ROWS];
    for (i, rec) in w.chunks_exact(RECORD).enumerate() {
        let (s, r) = (i / ROWS, i % ROWS);
        let (d, dmin) = (f32_at(rec, STEPS), f32_at(rec, STEPS + 4));
        for j in 0..SUBS {
            let b = s * SUBS + j;
            let xb = &x.quants[b * BLOCK..(b + 1) * BLOCK];
            let qs = &rec[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            let sum: i32 = qs
                .iter()
                .zip(xb)
                .map(|(&q, &v)| ((q >> shift) & 0xF) as i32 * v as i32)
                .sum();
            let dx = x.scales[b];
            dots[r] += d * rec[SCALES + j] as f32 * dx * sum as f32
                - dmin * rec[MINS + j] as f32 * dx * x.sums[b] as f32;
        }
    }
    dots
}

#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod tests;
