//! Q8_0 matrices: weights in 8-bit blocks of 32 with one scale each (ggml's Q8_0: the scale is
//! the block's `amax / 127` rounded to f16), multiplied by tokens quantized the same way per
//! block, in 32-bit integer dot products: AVX-512 VNNI where present, AVX2's 8-bit
//! multiply-adds otherwise. A decoding step reads 34 bytes per 32 weights, instead of 128.

use std::ops::Range;

use half::f16;

use super::{Isa, OutPtr, gemm, pool, split_rows};

/// Weights per block.
pub const BLOCK: usize = 32;
/// Weight rows one pass of the SIMD kernels computes (each token block is loaded once for them).
const ROWS: usize = 4;
/// Tokens from which a product dequantizes blocks of rows for the float product.
pub const WIDEN_TOKENS: usize = 4;
/// Rows one task of such a product dequantizes at a time.
const WIDEN_ROWS: usize = 64;

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

/// Quantizes one block as ggml does: `d = amax / 127`, `q = round(v / d)`; returns `d`.
fn quantize_block(values: &[f32], quants: &mut [i8]) -> f32 {
    let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
    for (q, v) in quants.iter_mut().zip(values) {
        *q = (v * inv).round() as i8;
    }
    d
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
        let blocks = cols / BLOCK;
        let padded = rows.div_ceil(ROWS) * ROWS;
        let mut quants = vec![0i8; padded * cols];
        let mut scales = vec![0f32; padded * blocks];
        for (r, row) in w.chunks_exact(cols.max(1)).enumerate() {
            for (b, values) in row.chunks_exact(BLOCK).enumerate() {
                let at = Self::block_index(r, b, blocks);
                let d = quantize_block(values, &mut quants[at * BLOCK..(at + 1) * BLOCK]);
                scales[at] = f16::from_f32(d).to_f32();
            }
        }
        Q8_0Matrix {
            rows,
            cols,
            quants,
            scales,
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
            let at = Self::block_index(r, b, blocks);
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

    /// Where block `b` of row `r` is stored, in blocks (`blocks` per row).
    fn block_index(r: usize, b: usize, blocks: usize) -> usize {
        ((r / ROWS) * blocks + b) * ROWS + r % ROWS
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
    fn dequantize_rows(&self, isa: Isa, first: usize, out: &mut [f32]) {
        match isa.capped(Isa::Avx512) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F (`capped`).
            Isa::Avx512 => unsafe { self.dequantize_rows_avx512(first, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 (`capped`).
            Isa::Avx2Fma => unsafe { self.dequantize_rows_avx2(first, out) },
            _ => self.dequantize_rows_with(first, out),
        }
    }

    /// [`Q8_0Matrix::dequantize_rows_with`] compiled for AVX2.
    ///
    /// # Safety
    /// AVX2 available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn dequantize_rows_avx2(&self, first: usize, out: &mut [f32]) {
        self.dequantize_rows_with(first, out)
    }

    /// [`Q8_0Matrix::dequantize_rows_with`] compiled for AVX-512.
    ///
    /// # Safety
    /// AVX-512F available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2")]
    unsafe fn dequantize_rows_avx512(&self, first: usize, out: &mut [f32]) {
        self.dequantize_rows_with(first, out)
    }

    /// The dequantization loop (compiled per ISA by its callers' `target_feature`).
    #[inline(always)]
    fn dequantize_rows_with(&self, first: usize, out: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        for (i, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            for (b, dst) in row.chunks_exact_mut(BLOCK).enumerate() {
                let at = Self::block_index(first + i, b, blocks);
                let d = self.scales[at];
                let q = &self.quants[at * BLOCK..(at + 1) * BLOCK];
                for (o, &q) in dst.iter_mut().zip(q) {
                    *o = q as f32 * d;
                }
            }
        }
    }

    /// `out = x W^T`: `x` `[m, cols]`, `out` `[m, rows]`, on the kernel threads. Below
    /// [`WIDEN_TOKENS`] tokens each token is quantized per block to 8 bits (its step kept in
    /// f32) and multiplied in integer dot products, which read the weights at memory speed;
    /// from there on, where the products are bound by arithmetic, blocks of rows are
    /// dequantized and multiplied by the float matrix product.
    ///
    /// # Panics
    /// If the slice lengths do not agree with `m` and the matrix's shape.
    pub fn matmul_t(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32]) {
        let (n, k) = (self.rows, self.cols);
        assert!(
            x.len() == m * k && out.len() == m * n,
            "Q8_0Matrix::matmul_t: x or out do not fit"
        );
        if m >= WIDEN_TOKENS {
            return self.matmul_t_widened(isa, x, m, out);
        }
        let blocks = k / BLOCK;
        let mut qx = vec![0i8; m * k];
        let sx: Vec<f32> = x
            .chunks_exact(BLOCK)
            .zip(qx.chunks_exact_mut(BLOCK))
            .map(|(v, q)| quantize_block(v, q))
            .collect();
        let tokens = Tokens {
            quants: &qx,
            scales: &sx,
            m,
            blocks,
        };
        let ptr = OutPtr(out.as_mut_ptr());
        let ranges = split_rows(n, rayon::current_num_threads() * 4, ROWS);
        pool::parallel_for(ranges.len(), |i| {
            // SAFETY: each task writes the output columns of its own rows only.
            unsafe { self.rows_into(isa, &tokens, ranges[i].clone(), ptr) }
        });
    }

    /// [`Q8_0Matrix::matmul_t`] for many tokens: the tokens packed once, then each task
    /// dequantizes [`WIDEN_ROWS`] rows and runs the float product on them (serially: it is
    /// inside a task).
    fn matmul_t_widened(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32]) {
        let n = self.rows;
        let tokens = gemm::PackedTokens::new(isa, x, m);
        let ptr = OutPtr(out.as_mut_ptr());
        pool::parallel_for(n.div_ceil(WIDEN_ROWS), |c| {
            let r0 = c * WIDEN_ROWS;
            let rows = WIDEN_ROWS.min(n - r0);
            let mut w = vec![0f32; rows * self.cols];
            self.dequantize_rows(isa, r0, &mut w);
            let mut part = vec![0f32; m * rows];
            gemm::matmul_t_packed(&tokens, &w, rows, &mut part);
            for (t, values) in part.chunks_exact(rows).enumerate() {
                // SAFETY: columns `r0..r0 + rows` of token `t < m` are this task's alone.
                unsafe {
                    std::ptr::copy_nonoverlapping(values.as_ptr(), ptr.get().add(t * n + r0), rows)
                };
            }
        });
    }

    /// Computes output columns `rows` (whole groups, but for the last) for every token.
    ///
    /// # Safety
    /// `out` is `m x self.rows` and no other thread writes these columns.
    unsafe fn rows_into(&self, isa: Isa, x: &Tokens<'_>, rows: Range<usize>, out: OutPtr) {
        let (n, blocks) = (self.rows, x.blocks);
        let isa = isa.capped(Isa::Avx512);
        for r in rows.clone().step_by(ROWS) {
            let count = ROWS.min(rows.end - r);
            let g = r / ROWS;
            let w = &self.quants[g * blocks * ROWS * BLOCK..(g + 1) * blocks * ROWS * BLOCK];
            let s = &self.scales[g * blocks * ROWS..(g + 1) * blocks * ROWS];
            for t in 0..x.m {
                let dots = match () {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the CPU has `isa` (`capped` gives portable otherwise); the
                    // slices hold one group of `blocks` blocks.
                    () if isa >= Isa::Avx2Fma => unsafe {
                        simd::dot_rows(isa, w, s, x.token(t), blocks)
                    },
                    () => dot_rows_portable(w, s, x.token(t)),
                };
                for (j, d) in dots.iter().enumerate().take(count) {
                    // SAFETY: token t < m, column r + j < n, owned by this task.
                    unsafe { *out.get().add(t * n + r + j) = *d };
                }
            }
        }
    }
}

/// One group's `ROWS` rows (`w`, steps `s`) dotted with one quantized token, in plain Rust.
fn dot_rows_portable(w: &[i8], s: &[f32], (qx, sx): (&[i8], &[f32])) -> [f32; ROWS] {
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

/// The tokens of a product, quantized per block.
struct Tokens<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
    m: usize,
    blocks: usize,
}

impl Tokens<'_> {
    /// Token `t`'s quants and block steps.
    fn token(&self, t: usize) -> (&[i8], &[f32]) {
        let k = self.blocks * BLOCK;
        (
            &self.quants[t * k..(t + 1) * k],
            &self.scales[t * self.blocks..(t + 1) * self.blocks],
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{BLOCK, ROWS};

    /// How many blocks ahead the kernels prefetch a group's quants.
    const PREFETCH: usize = 64;
    use crate::Isa;
    use crate::simd::hsum;

    /// Whether AVX-512 VNNI (with VL, for its 256-bit form) is present, checked once.
    fn vnni() -> bool {
        static VNNI: OnceLock<bool> = OnceLock::new();
        *VNNI.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl")
        })
    }

    /// One group's `ROWS` rows (`w` and their steps `s`, interleaved by block) dotted with one
    /// token `(qx, sx)`.
    ///
    /// # Safety
    /// `isa` at least AVX2 and available; `w` holds `ROWS * blocks * BLOCK` quants, `s`
    /// `ROWS * blocks` steps, the token `blocks` blocks.
    pub(super) unsafe fn dot_rows(
        isa: Isa,
        w: &[i8],
        s: &[f32],
        (qx, sx): (&[i8], &[f32]),
        blocks: usize,
    ) -> [f32; ROWS] {
        debug_assert!(w.len() == ROWS * blocks * BLOCK && s.len() == ROWS * blocks);
        debug_assert!(qx.len() == blocks * BLOCK && sx.len() == blocks);
        // SAFETY: as the caller guarantees; VNNI checked here.
        unsafe {
            if isa >= Isa::Avx512 && vnni() {
                dot_rows_vnni(w, s, qx, sx, blocks)
            } else {
                dot_rows_avx2(w, s, qx, sx, blocks)
            }
        }
    }

    /// The loop both kernels share: per block, `|w|` and `x` signed like `w` (so the
    /// unsigned-by-signed products are `w * x`), summed by `$dot` into eight 32-bit lanes,
    /// scaled by the two steps into float accumulators.
    macro_rules! dot_rows_with {
        ($w:ident, $s:ident, $qx:ident, $sx:ident, $blocks:ident, $dot:expr) => {{
            let mut acc = [_mm256_setzero_ps(); ROWS];
            for b in 0..$blocks {
                // Two lines of the block group `PREFETCH` blocks ahead (past the end is harmless:
                // a prefetch never faults).
                let ahead = $w.as_ptr().wrapping_add((b + PREFETCH) * ROWS * BLOCK);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
                let x = _mm256_loadu_si256($qx.as_ptr().add(b * BLOCK).cast());
                let dx = *$sx.get_unchecked(b);
                for r in 0..ROWS {
                    let w = _mm256_loadu_si256($w.as_ptr().add((b * ROWS + r) * BLOCK).cast());
                    let lanes = $dot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
                    let step = _mm256_set1_ps(*$s.get_unchecked(b * ROWS + r) * dx);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), step, acc[r]);
                }
            }
            std::array::from_fn(|r| hsum(acc[r]))
        }};
    }

    /// # Safety
    /// AVX2 and FMA; slices as [`dot_rows`] requires.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_rows_avx2(
        w: &[i8],
        s: &[f32],
        qx: &[i8],
        sx: &[f32],
        blocks: usize,
    ) -> [f32; ROWS] {
        // SAFETY: every offset is within the slices (`dot_rows`' contract); a pair of
        // 8-bit products is at most 2 * 127 * 127, inside the 16-bit sums.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            dot_rows_with!(w, s, qx, sx, blocks, |a, b| _mm256_madd_epi16(
                _mm256_maddubs_epi16(a, b),
                ones
            ))
        }
    }

    /// # Safety
    /// AVX-512 VNNI and VL, AVX2 and FMA; slices as [`dot_rows`] requires.
    #[target_feature(enable = "avx512vnni,avx512vl,avx2,fma")]
    unsafe fn dot_rows_vnni(
        w: &[i8],
        s: &[f32],
        qx: &[i8],
        sx: &[f32],
        blocks: usize,
    ) -> [f32; ROWS] {
        // SAFETY: every offset is within the slices (`dot_rows`' contract).
        unsafe {
            dot_rows_with!(w, s, qx, sx, blocks, |a, b| _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                a,
                b
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    /// Blocks as GGUF stores them come in unchanged: the same values as quantizing the
    /// dequantized weights again (Q8_0 is idempotent on its own grid), and the exact scales.
    #[test]
    fn ggml_blocks_import_exactly() {
        let (rows, cols) = (5, 64);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let ours = Q8_0Matrix::quantize(&w, rows, cols);
        let deq = ours.dequantize();
        // ggml's block layout from our dequantized values: scale = amax / 127 in f16.
        let mut bytes = Vec::new();
        for row in deq.chunks(cols) {
            for block in row.chunks(BLOCK) {
                let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = f16::from_f32(amax / 127.0);
                bytes.extend_from_slice(&d.to_le_bytes());
                let inv = if d.to_f32() == 0.0 {
                    0.0
                } else {
                    1.0 / d.to_f32()
                };
                bytes.extend(block.iter().map(|v| (v * inv).round() as i8 as u8));
            }
        }
        let imported = Q8_0Matrix::from_ggml_blocks(&bytes, rows, cols).unwrap();
        assert_eq!(imported.dequantize(), deq);
        assert!(Q8_0Matrix::from_ggml_blocks(&bytes[1..], rows, cols).is_none());
        assert!(Q8_0Matrix::from_ggml_blocks(&bytes, rows, cols + 1).is_none());
    }

    use super::*;
    use crate::tests_support::random;

    #[test]
    fn q8_0_products_match_a_float64_reference_of_the_quantized_operands() {
        eprintln!("q8_0 paths tested on this CPU: {:?}", Isa::available());
        for isa in Isa::available() {
            for (m, n, k) in [
                (1, 1, 32),
                (1, 9, 64),
                (3, 8, 96),
                (5, 33, 1024),
                (64, 7, 32),
            ] {
                let w = random(n * k, 7);
                let x: Vec<f32> = random(m * k, 8).iter().map(|v| v * 3.0).collect();
                let q = Q8_0Matrix::quantize(&w, n, k);
                let deq = q.dequantize();
                // Within half a step (plus the f16 rounding of the step) of every weight.
                for (block, dblock) in w.chunks(BLOCK).zip(deq.chunks(BLOCK)) {
                    let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let bound = amax / 127.0 * (0.5 + 127.0 / 2048.0) * 1.01;
                    for (v, d) in block.iter().zip(dblock) {
                        assert!((v - d).abs() <= bound, "{v} -> {d}");
                    }
                }
                let mut qx = vec![0i8; m * k];
                let sx: Vec<f64> = x
                    .chunks(BLOCK)
                    .zip(qx.chunks_mut(BLOCK))
                    .map(|(v, q)| quantize_block(v, q) as f64)
                    .collect();
                let mut out = vec![f32::NAN; m * n];
                q.matmul_t(isa, &x, m, &mut out);
                for t in 0..m {
                    for j in 0..n {
                        // Few tokens are quantized; many multiply the dequantized weights.
                        let xv = |i: usize| {
                            if m < WIDEN_TOKENS {
                                qx[t * k + i] as f64 * sx[(t * k + i) / BLOCK]
                            } else {
                                x[t * k + i] as f64
                            }
                        };
                        let want: f64 = (0..k).map(|i| xv(i) * deq[j * k + i] as f64).sum();
                        let scale = (0..k)
                            .map(|i| (x[t * k + i] * deq[j * k + i]).abs())
                            .sum::<f32>();
                        let got = out[t * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + scale as f64),
                            "{isa:?} {m}x{n}x{k} [{t},{j}]: got {got}, want {want}"
                        );
                    }
                }
            }
        }
    }
}
