//! Products with Q8_0 matrices: one matrix, or several sharing an input (q/k/v, gate/up) in one
//! pass whose outputs sit side by side.

use std::ops::Range;

use super::{BLOCK, Q8_0Matrix, ROWS, WIDEN_ROWS, WIDEN_TOKENS, quantize_block};
use crate::{Isa, OutPtr, gemm, pool, split_rows};

impl Q8_0Matrix {
    /// `out = x W^T`: `x` `[m, cols]`, `out` `[m, rows]`, on the kernel threads. Below
    /// [`WIDEN_TOKENS`] tokens each token is quantized per block to 8 bits (its step kept in
    /// f32) and multiplied in integer dot products, which read the weights at memory speed;
    /// from there on, where the products are bound by arithmetic, blocks of rows are
    /// dequantized and multiplied by the float matrix product.
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
        let k = parts.first().map_or(0, |p| p.cols);
        let n: usize = parts.iter().map(|p| p.rows).sum();
        assert!(
            parts.iter().all(|p| p.cols == k) && x.len() == m * k && out.len() == m * n,
            "Q8_0Matrix::matmul_t_many: the parts' widths, x or out do not fit"
        );
        let dest = Columns {
            out: OutPtr(out.as_mut_ptr()),
            stride: n,
        };
        if m >= WIDEN_TOKENS {
            return Self::widened(isa, parts, x, m, dest);
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
        // Each part's rows in about its share of the tasks, in whole groups.
        let tasks_wanted = rayon::current_num_threads() * 4;
        let mut tasks = Vec::new();
        let mut col = 0;
        for (i, p) in parts.iter().enumerate() {
            let share = (tasks_wanted * p.rows).div_ceil(n.max(1)).max(1);
            tasks.extend(
                split_rows(p.rows, share, ROWS)
                    .into_iter()
                    .map(|r| (i, col, r)),
            );
            col += p.rows;
        }
        pool::parallel_for(tasks.len(), |t| {
            let (i, col, ref rows) = tasks[t];
            // SAFETY: each task writes the output columns of its own rows only.
            unsafe { parts[i].rows_into(isa, &tokens, rows.clone(), dest.at(col)) }
        });
    }

    /// [`Q8_0Matrix::matmul_t_many`] for many tokens: the tokens packed once, then each task
    /// dequantizes [`WIDEN_ROWS`] rows of one part and runs the float product on them
    /// (serially: it is inside a task).
    fn widened(isa: Isa, parts: &[&Q8_0Matrix], x: &[f32], m: usize, dest: Columns) {
        let tokens = gemm::PackedTokens::new(isa, x, m);
        let mut tasks = Vec::new();
        let mut col = 0;
        for (i, p) in parts.iter().enumerate() {
            tasks.extend((0..p.rows).step_by(WIDEN_ROWS).map(|r0| (i, col, r0)));
            col += p.rows;
        }
        pool::parallel_for(tasks.len(), |t| {
            let (i, col, r0) = tasks[t];
            let p = parts[i];
            let rows = WIDEN_ROWS.min(p.rows - r0);
            let mut w = vec![0f32; rows * p.cols];
            p.dequantize_rows(isa, r0, &mut w);
            let mut part = vec![0f32; m * rows];
            gemm::matmul_t_packed(&tokens, &w, rows, &mut part);
            for (t, values) in part.chunks_exact(rows).enumerate() {
                // SAFETY: columns `col + r0..col + r0 + rows` of token `t < m` are this
                // task's alone.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        values.as_ptr(),
                        dest.at(col).row(t, dest.stride).add(r0),
                        rows,
                    )
                };
            }
        });
    }

    /// Computes this matrix's output columns `rows` (whole groups, but for the last) for every
    /// token, into `out` (this matrix's first column of token 0, rows `stride` apart).
    ///
    /// # Safety
    /// `out` addresses `m` rows of `stride >= self.rows` columns from this matrix's first one,
    /// and no other thread writes these columns.
    unsafe fn rows_into(&self, isa: Isa, x: &Tokens<'_>, rows: Range<usize>, out: Column) {
        let blocks = x.blocks;
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
                        super::simd::dot_rows(isa, w, s, x.token(t), blocks)
                    },
                    () => dot_rows_portable(w, s, x.token(t)),
                };
                for (j, d) in dots.iter().enumerate().take(count) {
                    // SAFETY: token t < m, column r + j < self.rows, owned by this task.
                    unsafe { *out.row(t, out.stride).add(r + j) = *d };
                }
            }
        }
    }
}

/// Where a product writes: `m` rows of `stride` columns.
#[derive(Clone, Copy)]
struct Columns {
    out: OutPtr,
    stride: usize,
}

impl Columns {
    /// The columns from `col` on.
    fn at(self, col: usize) -> Column {
        Column {
            first: OutPtr(self.out.get().wrapping_add(col)),
            stride: self.stride,
        }
    }
}

/// One part's first output column, rows `stride` apart.
#[derive(Clone, Copy)]
struct Column {
    first: OutPtr,
    stride: usize,
}

impl Column {
    /// Token `t`'s first column of this part (`stride` as given, for the caller's clarity).
    fn row(self, t: usize, stride: usize) -> *mut f32 {
        self.first.get().wrapping_add(t * stride)
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
