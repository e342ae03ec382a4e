//! What the block formats' products share: matrices stored in groups of [`ROWS`] rows whose
//! 32-weight blocks interleave (group, block, row), tokens quantized per block to 8 bits, and
//! the product that shares the rows out to the kernel threads ([`matmul_t_many`]): integer
//! dot products for a few tokens; for many, integer tiles of up to [`TILE`] tokens where the
//! format has them for the CPU (every block format here, on AVX-512 VNNI: [`Groups::tiles`]),
//! else dequantized rows and the float product.

mod product;
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub(crate) mod tile;
mod tokens;

pub(crate) use product::matmul_t_many;
pub(crate) use tokens::{TileTokens, TokenScratch};

use crate::Isa;

/// Weights per block.
pub const BLOCK: usize = 32;
/// Weight rows one pass of the SIMD kernels computes (each token block is loaded once for them).
pub(crate) const ROWS: usize = 4;
/// Tokens from which a product without integer tiles dequantizes blocks of rows for the float
/// product.
pub const WIDEN_TOKENS: usize = 4;
/// Rows one task of such a product dequantizes at a time.
pub(crate) const WIDEN_ROWS: usize = 64;
/// Tokens one call of [`Groups::dot_tile`] multiplies at most: 6 accumulators and the
/// unpacked weights fit the 32 AVX-512 registers. With the tokens read row by row, 8 spilled
/// (64 against 139 GMAC/s for a 64-token Q4_0 product; 4: 133); laid out block by block
/// ([`TileTokens`]), 8 measured within the noise of 6 (164-184 against 171-173).
pub(crate) const TILE: usize = 6;

/// One token quantized per block as ggml's Q8_0 does: 8-bit quants, each block's step, and
/// each block's sum of quants (what a format whose quants carry an offset subtracts).
#[derive(Clone, Copy)]
pub(crate) struct Token<'a> {
    pub(crate) quants: &'a [i8],
    pub(crate) scales: &'a [f32],
    pub(crate) sums: &'a [i32],
    /// Each half block's sum of quants (16 quants), for formats with 16-weight sub-scales.
    pub(crate) half_sums: &'a [i32],
}

/// A matrix in one block format, as the shared product reads it.
pub(crate) trait Groups: Sync {
    /// `[rows, cols]`.
    fn dims(&self) -> (usize, usize);

    /// Group `g`'s [`ROWS`] rows dotted with `token`, for `isa` (at most AVX-512, available).
    fn dot_group(&self, isa: Isa, g: usize, token: Token<'_>) -> [f32; ROWS];

    /// Rows `first..first + out.len() / cols` of the weights, row-major, into `out`.
    fn dequantize_rows(&self, isa: Isa, first: usize, out: &mut [f32]);

    /// Whether many tokens are multiplied on `isa` in integer tiles ([`Groups::dot_tile`]),
    /// where the weights are read once per [`TILE`] tokens, rather than by dequantizing rows
    /// for the float product: formats with a tile kernel for `isa` say so.
    fn tiles(&self, _isa: Isa) -> bool {
        false
    }

    /// Group `g`'s [`ROWS`] rows dotted with each token of `x` (`out.len() == x.n`), for `isa`
    /// (at most AVX-512, available); called where [`Groups::tiles`] says so. The formats with
    /// a tile kernel for `isa` run it; this default goes token by token
    /// ([`Groups::dot_group`]).
    fn dot_tile(&self, isa: Isa, g: usize, x: &TileTokens<'_>, out: &mut [[f32; ROWS]]) {
        dot_tile_by_token(self, isa, g, x, out)
    }
}

/// Whether `isa` runs the integer tiles written here: AVX-512 with VNNI's 512-bit form (and
/// BW), which every block format here (Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q6_K, Q8_0) says as its
/// [`Groups::tiles`].
pub(crate) fn vnni_tiles(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 && crate::simd::vnni512() {
        return true;
    }
    let _ = isa;
    false
}

/// Asserts that a tile of tokens fits a matrix of `cols` inputs and `out` holds one row of
/// dots per token: what [`Groups::dot_tile`]'s kernels index by (a cheap check per group and
/// tile, so that a wrong caller fails here rather than reading out of bounds).
pub(crate) fn check_tile(x: &TileTokens<'_>, cols: usize, out: &[[f32; ROWS]]) {
    assert!(
        out.len() == x.n
            && (1..=TILE).contains(&x.n)
            && x.blocks * BLOCK == cols
            && x.quants.len() == x.n * cols
            && x.scales.len() == x.n * x.blocks
            && x.sums.len() == x.n * x.blocks
            && x.shares.len() == x.n * x.blocks
            && x.half_sums.len() == 2 * x.n * x.blocks,
        "dot_tile: a tile of {} tokens does not fit {cols} inputs or {} outputs",
        x.n,
        out.len()
    );
}

/// [`Groups::dot_tile`] one token at a time.
pub(crate) fn dot_tile_by_token<M: Groups + ?Sized>(
    p: &M,
    isa: Isa,
    g: usize,
    x: &TileTokens<'_>,
    out: &mut [[f32; ROWS]],
) {
    let mut scratch = TokenScratch::default();
    for (t, dots) in out.iter_mut().enumerate() {
        *dots = p.dot_group(isa, g, x.token(t, &mut scratch));
    }
}

/// Whether a product of `m` tokens with `p` on `isa` quantizes the tokens to 8 bits per block
/// (integer dot products) rather than multiplying them as floats (dequantized rows).
pub(crate) fn quantizes_tokens<M: Groups>(p: &M, isa: Isa, m: usize) -> bool {
    m < WIDEN_TOKENS || p.tiles(isa.capped(Isa::Avx512))
}

/// A matrix held in one of the block formats computed here ([`crate::q8_0::Q8_0Matrix`],
/// [`crate::q4_0::Q4_0Matrix`]): what a caller generic over the format needs.
pub trait BlockMatrix: Send + Sync + Sized {
    /// The format's name (`q8_0`, `q4_0`), for messages.
    const FORMAT: &'static str;

    /// `[rows, cols]`.
    fn shape(&self) -> (usize, usize);

    /// The products of `x` (`[m, cols]`) with each of `parts`, side by side in `out`
    /// (`[m, Σ rows]`), in one pass.
    ///
    /// # Panics
    /// If the parts' widths differ or the slice lengths do not agree with `m` and the shapes.
    fn matmul_t_many(isa: Isa, parts: &[&Self], x: &[f32], m: usize, out: &mut [f32]);
}

/// Runs `f` compiled for the widest of AVX-512 and AVX2 that `isa` allows (the CPU has it:
/// `Isa::capped`), portable otherwise: the block formats' dequantization loops, written once
/// in plain Rust, vectorised by the compiler for each.
#[inline(always)]
pub(crate) fn with_isa(isa: Isa, f: impl FnOnce()) {
    match isa.capped(Isa::Avx512) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F (`capped`).
        Isa::Avx512 => unsafe { avx512(f) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (`capped`).
        Isa::Avx2Fma => unsafe { avx2(f) },
        _ => f(),
    }
}

/// # Safety
/// AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn avx512(f: impl FnOnce()) {
    f()
}

/// # Safety
/// AVX2 available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2(f: impl FnOnce()) {
    f()
}

/// Where block `b` of row `r` is stored, in blocks (`blocks` per row).
pub(crate) fn block_index(r: usize, b: usize, blocks: usize) -> usize {
    ((r / ROWS) * blocks + b) * ROWS + r % ROWS
}

/// Quantizes one block as ggml's Q8_0 does: `d = amax / 127`, `q = round(v / d)` (halves away
/// from zero, as C's `roundf`); returns `d`.
///
/// A NaN or infinite value makes the step NaN and the quants zero ([`block_step`]), so it
/// reaches the product's output instead of being quantized away. Inlined, so that under
/// [`with_isa`] the loops vectorise (`f32::round` would call `roundf` per value).
#[inline(always)]
pub(crate) fn quantize_block(values: &[f32], quants: &mut [i8]) -> f32 {
    let (mut amax, mut nan) = (0f32, false);
    for v in values {
        amax = amax.max(v.abs());
        nan |= v.is_nan();
    }
    let Some((d, inv)) = block_step(amax, !nan) else {
        quants.fill(0);
        return f32::NAN;
    };
    for (q, v) in quants.iter_mut().zip(values) {
        *q = round_half_away(v * inv) as i8;
    }
    d
}

/// A block's step (`amax / 127`) and the inverse its values are multiplied by, shared by the
/// scalar and SIMD quantizers so they agree on every input: `None` where a value is NaN
/// (`!finite`) or infinite; the inverse 0 for an all-zero block, and for a step so small that
/// its inverse overflows (below about 1e-37: ggml's would quantize infinities there).
#[inline(always)]
pub(crate) fn block_step(amax: f32, finite: bool) -> Option<(f32, f32)> {
    if !finite || !amax.is_finite() {
        return None;
    }
    let d = amax / 127.0;
    let inv = 1.0 / d;
    Some((d, if inv.is_finite() { inv } else { 0.0 }))
}

/// `x.round()` (halves away from zero) by truncation, which compiles to one instruction where
/// SSE4.1 or AVX is enabled: `x - trunc(x)` is exact for the magnitudes quantized here.
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    let t = x.trunc();
    if (x - t).abs() >= 0.5 {
        t + 1f32.copysign(x)
    } else {
        t
    }
}

#[cfg(test)]
#[test]
fn rounding_by_truncation_is_rounds() {
    for i in -2600..=2600 {
        let x = i as f32 * 0.05;
        for x in [
            x,
            x.next_up(),
            x.next_down(),
            i as f32 + 0.5,
            -(i as f32) - 0.5,
        ] {
            assert_eq!(round_half_away(x), x.round(), "{x}");
        }
    }
    assert!(round_half_away(f32::NAN).is_nan());
}

#[cfg(all(test, target_arch = "x86_64"))]
#[test]
fn simd_token_quantization_is_the_scalar_one() {
    if !Isa::available().contains(&Isa::Avx2Fma) {
        return;
    }
    let noise = crate::tests_support::random(64 * BLOCK, 3);
    for (i, block) in noise.chunks_exact(BLOCK).enumerate() {
        let mut v: Vec<f32> = block.iter().map(|x| x * (1 + i) as f32).collect();
        if i % 4 == 1 {
            // Exact halves: the largest magnitude 127 steps of 1, the others on .5.
            v = (0..BLOCK).map(|j| j as f32 - 15.5).collect();
            v[0] = 127.0;
        }
        if i % 4 == 2 {
            v[i % BLOCK] = f32::NAN;
        }
        if i == 3 {
            v.fill(0.0);
        }
        if i == 5 {
            v[7] = f32::INFINITY;
        }
        if i == 6 {
            v[9] = f32::NEG_INFINITY;
        }
        if i == 7 || i == 9 {
            // A largest magnitude whose step's inverse overflows, and one whose does not.
            let amax = if i == 7 { 1e-38 } else { 1e-30 };
            v = (0..BLOCK)
                .map(|j| amax * (j as f32 - 15.0) / 16.0)
                .collect();
        }
        let (mut want, mut got) = ([0i8; BLOCK], [0i8; BLOCK]);
        let d = quantize_block(&v, &mut want);
        // SAFETY: AVX2 is available (checked above); one block each.
        let (dg, halves) = unsafe { simd_quantize(&v, &mut got) };
        assert!(d.to_bits() == dg.to_bits(), "block {i}: step {dg} for {d}");
        assert_eq!(got, want, "block {i}");
        let sum = |q: &[i8]| q.iter().map(|&v| v as i32).sum::<i32>();
        assert_eq!(halves, [sum(&want[..16]), sum(&want[16..])], "block {i}");
    }
}

/// [`simd::quantize_block`] compiled with AVX2.
///
/// # Safety
/// AVX2 available; one block each.
#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn simd_quantize(v: &[f32], q: &mut [i8]) -> (f32, [i32; 2]) {
    // SAFETY: the caller's contract.
    unsafe { simd::quantize_block(v, q) }
}

/// Checks a block product's `out` (`[m, n]`) against a float64 reference of its quantized
/// operands: the dequantized weights `deq` (`[n, k]`) times the tokens `x` as the product
/// used them (quantized per block when `quantized`: [`quantizes_tokens`]), within `1e-5` of
/// the sum of the products' magnitudes.
#[cfg(test)]
pub(crate) fn assert_product_matches(
    (what, quantized): (&str, bool),
    (m, n, k): (usize, usize, usize),
    x: &[f32],
    deq: &[f32],
    out: &[f32],
) {
    let mut qx = vec![0i8; m * k];
    let sx: Vec<f64> = x
        .chunks(BLOCK)
        .zip(qx.chunks_mut(BLOCK))
        .map(|(v, q)| quantize_block(v, q) as f64)
        .collect();
    for t in 0..m {
        for j in 0..n {
            let xv = |i: usize| {
                if quantized {
                    qx[t * k + i] as f64 * sx[(t * k + i) / BLOCK]
                } else {
                    x[t * k + i] as f64
                }
            };
            let want: f64 = (0..k).map(|i| xv(i) * deq[j * k + i] as f64).sum();
            let scale: f32 = (0..k).map(|i| (x[t * k + i] * deq[j * k + i]).abs()).sum();
            let got = out[t * n + j] as f64;
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + scale as f64),
                "{what} {m}x{n}x{k} [{t},{j}]: got {got}, want {want}"
            );
        }
    }
}
