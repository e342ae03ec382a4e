//! The product of block-format matrices sharing an input (one matrix, or q/k/v, gate/up in one
//! pass whose outputs sit side by side).

use std::ops::Range;

use super::tokens::{Tiled, Tokens, quantize_tokens};
use super::{BLOCK, Groups, ROWS, TILE, WIDEN_ROWS, quantizes_tokens};
use crate::{Isa, OutPtr, gemm, pool, split_rows};

/// The products of `x` (`[m, cols]`) with each of `parts` (matrices of one width), side by
/// side: `out` `[m, Σ rows]`, part `i`'s columns after part `i - 1`'s. Below
/// [`super::WIDEN_TOKENS`] tokens, or where the format has integer tiles for `isa`
/// ([`Groups::tiles`]), each token is quantized per block to 8 bits and multiplied in integer
/// dot products, which read the weights at memory speed; otherwise, where the products are
/// bound by arithmetic, blocks of rows are dequantized and multiplied by the float matrix
/// product. The tokens are quantized (or packed) once and the parts' rows shared out to the
/// kernel threads together.
///
/// # Panics
/// If the parts' widths differ or the slice lengths do not agree with `m` and the shapes.
pub(crate) fn matmul_t_many<M: Groups>(
    isa: Isa,
    parts: &[&M],
    x: &[f32],
    m: usize,
    out: &mut [f32],
) {
    let k = parts.first().map_or(0, |p| p.dims().1);
    let n: usize = parts.iter().map(|p| p.dims().0).sum();
    assert!(
        parts.iter().all(|p| p.dims().1 == k) && x.len() == m * k && out.len() == m * n,
        "matmul_t_many: the parts' widths, x or out do not fit"
    );
    let dest = Columns {
        out: OutPtr(out.as_mut_ptr()),
        stride: n,
    };
    if !parts.first().is_some_and(|p| quantizes_tokens(*p, isa, m)) {
        return widened(isa, parts, x, m, dest);
    }
    let blocks = k / BLOCK;
    let (mut qx, mut sx) = (vec![0i8; m * k], vec![0f32; m * blocks]);
    let (mut half_sums, mut sums) = (vec![0i32; 2 * m * blocks], vec![0i32; m * blocks]);
    let mut shares = vec![0f32; m * blocks];
    let quantized = (&mut qx[..], &mut sx[..], &mut half_sums[..], &mut sums[..]);
    quantize_tokens(isa, x, quantized, &mut shares);
    let tokens = Tokens {
        quants: &qx,
        scales: &sx,
        sums: &sums,
        shares: &shares,
        half_sums: &half_sums,
        m,
        blocks,
    };
    let tiles = parts
        .first()
        .is_some_and(|p| p.tiles(isa.capped(Isa::Avx512)));
    let tiled = tiles.then(|| Tiled::new(&tokens));
    // Each part's rows in about its share of the tasks, in whole groups.
    let tasks_wanted = rayon::current_num_threads() * 4;
    let mut tasks = Vec::new();
    let mut col = 0;
    for (i, p) in parts.iter().enumerate() {
        let rows = p.dims().0;
        let share = (tasks_wanted * rows).div_ceil(n.max(1)).max(1);
        tasks.extend(
            split_rows(rows, share, ROWS)
                .into_iter()
                .map(|r| (i, col, r)),
        );
        col += rows;
    }
    pool::parallel_for(tasks.len(), |t| {
        let (i, col, ref rows) = tasks[t];
        // SAFETY: each task writes the output columns of its own rows only.
        unsafe {
            rows_into(
                parts[i],
                isa,
                (&tokens, tiled.as_ref()),
                rows.clone(),
                dest.at(col),
            )
        }
    });
}

/// [`matmul_t_many`] for many tokens: the tokens packed once, then each task dequantizes
/// [`WIDEN_ROWS`] rows of one part and runs the float product on them (serially: it is inside
/// a task).
fn widened<M: Groups>(isa: Isa, parts: &[&M], x: &[f32], m: usize, dest: Columns) {
    let tokens = gemm::PackedTokens::new(isa, x, m);
    let mut tasks = Vec::new();
    let mut col = 0;
    for (i, p) in parts.iter().enumerate() {
        let rows = p.dims().0;
        tasks.extend((0..rows).step_by(WIDEN_ROWS).map(|r0| (i, col, r0)));
        col += rows;
    }
    pool::parallel_for(tasks.len(), |t| {
        let (i, col, r0) = tasks[t];
        let p = parts[i];
        let (prows, pcols) = p.dims();
        let rows = WIDEN_ROWS.min(prows - r0);
        let mut w = vec![0f32; rows * pcols];
        p.dequantize_rows(isa, r0, &mut w);
        let mut part = vec![0f32; m * rows];
        gemm::matmul_t_packed(&tokens, &w, rows, &mut part);
        for (t, values) in part.chunks_exact(rows).enumerate() {
            // SAFETY: columns `col + r0..col + r0 + rows` of token `t < m` are this task's
            // alone.
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

/// Computes `p`'s output columns `rows` (whole groups, but for the last) for every token, into
/// `out` (`p`'s first column of token 0, rows `stride` apart): by tiles of up to [`TILE`]
/// tokens where `tiled` holds them ([`Groups::tiles`]), else token by token.
///
/// # Safety
/// `out` addresses `m` rows of `stride >= rows of p` columns from `p`'s first one, and no other
/// thread writes these columns.
unsafe fn rows_into<M: Groups>(
    p: &M,
    isa: Isa,
    (x, tiled): (&Tokens<'_>, Option<&Tiled>),
    rows: Range<usize>,
    out: Column,
) {
    let isa = isa.capped(Isa::Avx512);
    let mut dots = [[0f32; ROWS]; TILE];
    for r in rows.clone().step_by(ROWS) {
        let count = ROWS.min(rows.end - r);
        for first in (0..x.m).step_by(TILE) {
            let n = TILE.min(x.m - first);
            match tiled {
                Some(tiled) => p.dot_tile(isa, r / ROWS, &tiled.tile(first, n), &mut dots[..n]),
                None => {
                    for (i, dots) in dots[..n].iter_mut().enumerate() {
                        *dots = p.dot_group(isa, r / ROWS, x.token(first + i));
                    }
                }
            }
            for (i, row) in dots[..n].iter().enumerate() {
                for (j, d) in row.iter().enumerate().take(count) {
                    // SAFETY: token first + i < m, column r + j < rows of p, owned by this
                    // task.
                    unsafe { *out.row(first + i, out.stride).add(r + j) = *d };
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
