//! Matrix-matrix products `out = x W^T (+ bias)` for several tokens at once (prefill, batched
//! decoding): `x` `[m, k]` row-major, the weight `W` `[n, k]` as stored (f32, or bf16 widened
//! block by block), `out` `[m, n]`.
//!
//! The SIMD kernels (AVX2 and AVX-512, one blocked loop over tiles of either width) read `W` in place, without packing it: a register tile of `MR` weight rows
//! by `NR` tokens accumulates `MR x NR` dot products, broadcasting one weight at a time against
//! a panel of `NR` tokens (the tokens are packed once per call, `k`-major, which is cheap: `x`
//! is small). Loops are blocked so that a tile of weight rows stays in cache while every token
//! panel passes over it, and the token panels of a `k` block stay in L2; each thread owns a
//! contiguous range of weight rows, so `W` is streamed from memory once per call.

use std::sync::Mutex;

use super::{Isa, WeightElem, gemv, pool, split_rows};

/// `out = x w^T + bias`: `x` `[m, k]`, `w` `[n, k]`, `bias` `[n]`, `out` `[m, n]`, on the kernel
/// threads. One token (`m == 1`) is a matrix-vector product.
///
/// # Panics
/// If the slice lengths do not agree with `m` and `n`.
pub fn matmul_t<E: WeightElem>(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &[E],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(
        m > 0 && x.len().is_multiple_of(m),
        "matmul_t: x is not m x k"
    );
    let k = x.len() / m;
    assert_eq!(w.len(), n * k, "matmul_t: w is not n x k");
    assert_eq!(out.len(), m * n, "matmul_t: out is not m x n");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "matmul_t: bias is not n");
    }
    if m == 1 {
        gemv::gemv(isa, w, x, out);
    } else {
        match isa.capped(Isa::Amx) {
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            Isa::Amx if E::as_bf16(w).is_some() && super::amx::fits(k) => {
                if let Some(w) = E::as_bf16(w) {
                    super::amx::matmul_t(x, m, k, w, n, out)
                }
            }
            _ => matmul_t_packed(&PackedTokens::new(isa, x, m), w, n, out),
        }
    }
    if let Some(b) = bias {
        for row in out.chunks_mut(n.max(1)) {
            row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
    }
}

/// Tokens `x` (`[m, k]`) laid out for the float product's register tiles once, for several
/// products with the same tokens: what a product that walks its weights in blocks (Q8_0
/// matrices, dequantized a block of rows at a time) passes to [`matmul_t_packed`] per block.
#[derive(Clone, Debug)]
pub struct PackedTokens {
    isa: Isa,
    m: usize,
    k: usize,
    /// Panels of the tile's width in tokens, `k`-major (SIMD paths), or `x` as given
    /// (portable).
    data: Vec<f32>,
}

impl PackedTokens {
    /// Packs `x` (`m` rows) for products on `isa` (narrowed to what the CPU has).
    ///
    /// # Panics
    /// If `m` is zero or does not divide `x`'s length.
    pub fn new(isa: Isa, x: &[f32], m: usize) -> PackedTokens {
        assert!(
            m > 0 && x.len().is_multiple_of(m),
            "PackedTokens: x is not m x k"
        );
        let k = x.len() / m;
        let isa = isa.capped(Isa::Avx512);
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma | Isa::Avx512 => {
                let width = simd::with_tile(isa, (m, k), simd::PanelWidth);
                PackedTokens {
                    isa,
                    m,
                    k,
                    data: simd::pack(x, m, k, width),
                }
            }
            _ => PackedTokens {
                isa: Isa::Portable,
                m,
                k,
                data: x.to_vec(),
            },
        }
    }
}

/// `out = x w^T` for packed tokens `x` (`m` of them): `w` `[n, k]`, `out` `[m, n]`, on the
/// kernel threads (serially when called from inside a kernel task).
///
/// # Panics
/// If the slice lengths do not agree with the tokens' `m`, `k` and `n`.
pub fn matmul_t_packed<E: WeightElem>(x: &PackedTokens, w: &[E], n: usize, out: &mut [f32]) {
    let (m, k) = (x.m, x.k);
    assert_eq!(w.len(), n * k, "matmul_t_packed: w is not n x k");
    assert_eq!(out.len(), m * n, "matmul_t_packed: out is not m x n");
    match x.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma | Isa::Avx512 => simd::with_tile(
            x.isa,
            (m, k),
            simd::Product {
                xp: &x.data,
                m,
                k,
                w,
                n,
                out,
            },
        ),
        _ => {
            let rows: Vec<Mutex<&mut [f32]>> = out.chunks_mut(n.max(1)).map(Mutex::new).collect();
            pool::parallel_for(rows.len(), |t| {
                let mut o = rows[t]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                gemv::gemv_rows(Isa::Portable, w, &x.data[t * k..(t + 1) * k], &mut o);
            });
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd;

#[cfg(test)]
mod tests;
