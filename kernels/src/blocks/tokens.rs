//! The tokens of a block product, quantized per block to 8 bits ([`quantize_tokens`]): one
//! after another for the token-by-token kernels ([`Tokens`]), and block by block in tiles for
//! the integer tiles ([`Tiled`], [`TileTokens`]).

#[cfg(target_arch = "x86_64")]
use super::simd;
use super::{BLOCK, TILE, Token, quantize_block};
use crate::Isa;

/// Quantizes each 32-value block of `x` into `quants` with its step, its halves' and its sum of
/// quants, and the step times the sum, compiled for the widest of AVX-512 and AVX2 that `isa`
/// allows: the SIMD block quantizer where there is one (the compiler left the plain loop
/// scalar, its rounding a call per value).
pub(super) fn quantize_tokens(
    isa: Isa,
    x: &[f32],
    out: (&mut [i8], &mut [f32], &mut [i32], &mut [i32]),
    shares: &mut [f32],
) {
    match isa.capped(Isa::Avx512) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F (`capped`).
        Isa::Avx512 => unsafe { quantize_tokens_avx512(x, out, shares) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (`capped`).
        Isa::Avx2Fma => unsafe { quantize_tokens_avx2(x, out, shares) },
        _ => quantize_tokens_with(x, out, shares, |v, q| {
            let d = quantize_block(v, q);
            let (lo, hi) = q.split_at(BLOCK / 2);
            let sum = |q: &[i8]| q.iter().map(|&v| v as i32).sum();
            (d, [sum(lo), sum(hi)])
        }),
    }
}

/// # Safety
/// AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn quantize_tokens_avx512(
    x: &[f32],
    out: (&mut [i8], &mut [f32], &mut [i32], &mut [i32]),
    shares: &mut [f32],
) {
    // SAFETY: AVX2 enabled here.
    quantize_tokens_with(x, out, shares, |v, q| unsafe { simd::quantize_block(v, q) })
}

/// # Safety
/// AVX2 available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_tokens_avx2(
    x: &[f32],
    out: (&mut [i8], &mut [f32], &mut [i32], &mut [i32]),
    shares: &mut [f32],
) {
    // SAFETY: AVX2 enabled here.
    quantize_tokens_with(x, out, shares, |v, q| unsafe { simd::quantize_block(v, q) })
}

/// [`quantize_tokens`]' loop, `block` quantizing one block (its step and halves' sums).
#[inline(always)]
fn quantize_tokens_with(
    x: &[f32],
    (quants, steps, half_sums, sums): (&mut [i8], &mut [f32], &mut [i32], &mut [i32]),
    shares: &mut [f32],
    block: impl Fn(&[f32], &mut [i8]) -> (f32, [i32; 2]),
) {
    let blocks = x.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK));
    let sums = steps.iter_mut().zip(sums.iter_mut().zip(shares));
    for (((v, q), (d, (sum, share))), half) in blocks.zip(sums).zip(half_sums.chunks_exact_mut(2)) {
        let halves;
        (*d, halves) = block(v, q);
        half.copy_from_slice(&halves);
        *sum = halves[0] + halves[1];
        *share = *d * *sum as f32;
    }
}

/// The tokens of a product, quantized per block, one after another.
pub(crate) struct Tokens<'a> {
    pub(crate) quants: &'a [i8],
    pub(crate) scales: &'a [f32],
    pub(crate) sums: &'a [i32],
    /// Each block's step times its sum of quants (what a min per block is multiplied by).
    pub(crate) shares: &'a [f32],
    pub(crate) half_sums: &'a [i32],
    pub(crate) m: usize,
    pub(crate) blocks: usize,
}

impl Tokens<'_> {
    /// Token `t`'s quants, block steps and block sums.
    pub(crate) fn token(&self, t: usize) -> Token<'_> {
        let (k, b) = (self.blocks * BLOCK, self.blocks);
        Token {
            quants: &self.quants[t * k..(t + 1) * k],
            scales: &self.scales[t * b..(t + 1) * b],
            sums: &self.sums[t * b..(t + 1) * b],
            half_sums: &self.half_sums[2 * t * b..2 * (t + 1) * b],
        }
    }
}

/// The tokens of a product laid out for the integer tiles: tiles of [`TILE`] tokens (the last
/// one shorter), each block by block (block `b` of every token of the tile together), so a tile
/// kernel reaches a token's block at a constant offset from the block's.
pub(crate) struct Tiled {
    quants: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
    shares: Vec<f32>,
    half_sums: Vec<i32>,
    blocks: usize,
}

impl Tiled {
    /// `x`'s tokens rearranged.
    pub(super) fn new(x: &Tokens<'_>) -> Tiled {
        let (m, blocks) = (x.m, x.blocks);
        let k = blocks * BLOCK;
        let mut tiled = Tiled {
            quants: vec![0; m * k],
            scales: vec![0.0; m * blocks],
            sums: vec![0; m * blocks],
            shares: vec![0.0; m * blocks],
            half_sums: vec![0; 2 * m * blocks],
            blocks,
        };
        for first in (0..m).step_by(TILE) {
            let n = TILE.min(m - first);
            for b in 0..blocks {
                for t in 0..n {
                    let (from, to) = ((first + t) * blocks + b, first * blocks + b * n + t);
                    tiled.quants[to * BLOCK..(to + 1) * BLOCK]
                        .copy_from_slice(&x.quants[from * BLOCK..(from + 1) * BLOCK]);
                    tiled.scales[to] = x.scales[from];
                    tiled.sums[to] = x.sums[from];
                    tiled.shares[to] = x.shares[from];
                    tiled.half_sums[2 * to..2 * to + 2]
                        .copy_from_slice(&x.half_sums[2 * from..2 * from + 2]);
                }
            }
        }
        tiled
    }

    /// The tile of tokens `first..first + n` (`first` a multiple of [`TILE`]).
    pub(super) fn tile(&self, first: usize, n: usize) -> TileTokens<'_> {
        let b = self.blocks;
        TileTokens {
            quants: &self.quants[first * b * BLOCK..(first + n) * b * BLOCK],
            scales: &self.scales[first * b..(first + n) * b],
            sums: &self.sums[first * b..(first + n) * b],
            shares: &self.shares[first * b..(first + n) * b],
            half_sums: &self.half_sums[2 * first * b..2 * (first + n) * b],
            n,
            blocks: b,
        }
    }
}

/// Up to [`TILE`] tokens of a product, block by block ([`Tiled`]): token `t`'s block `b` at
/// `b * n + t` (its quants at `(b * n + t) * BLOCK`, its half sums at `2 * (b * n + t)`).
pub(crate) struct TileTokens<'a> {
    pub(crate) quants: &'a [i8],
    pub(crate) scales: &'a [f32],
    pub(crate) sums: &'a [i32],
    pub(crate) shares: &'a [f32],
    pub(crate) half_sums: &'a [i32],
    pub(crate) n: usize,
    pub(crate) blocks: usize,
}

impl TileTokens<'_> {
    /// Token `t`'s blocks gathered into `scratch` (or taken in place for a tile of one), as
    /// the token-by-token kernels read them.
    pub(crate) fn token<'s>(&'s self, t: usize, scratch: &'s mut TokenScratch) -> Token<'s> {
        if self.n == 1 {
            return Token {
                quants: self.quants,
                scales: self.scales,
                sums: self.sums,
                half_sums: self.half_sums,
            };
        }
        let (n, blocks) = (self.n, self.blocks);
        scratch.quants.resize(blocks * BLOCK, 0);
        scratch.scales.resize(blocks, 0.0);
        scratch.sums.resize(blocks, 0);
        scratch.half_sums.resize(2 * blocks, 0);
        for b in 0..blocks {
            let at = b * n + t;
            scratch.quants[b * BLOCK..(b + 1) * BLOCK]
                .copy_from_slice(&self.quants[at * BLOCK..(at + 1) * BLOCK]);
            scratch.scales[b] = self.scales[at];
            scratch.sums[b] = self.sums[at];
            scratch.half_sums[2 * b..2 * b + 2]
                .copy_from_slice(&self.half_sums[2 * at..2 * at + 2]);
        }
        Token {
            quants: &scratch.quants,
            scales: &scratch.scales,
            sums: &scratch.sums,
            half_sums: &scratch.half_sums,
        }
    }
}

/// Room for one token's blocks, gathered from a tile ([`TileTokens::token`]).
#[derive(Default)]
pub(crate) struct TokenScratch {
    quants: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
    half_sums: Vec<i32>,
}
