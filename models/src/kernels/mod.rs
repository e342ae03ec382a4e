//! CPU kernels for the hot paths of the models: matrix-vector and matrix-matrix products
//! against weight matrices stored `[out, in]` (f32, or bf16 widened on the fly), the fused
//! SwiGLU, and attention over the KV cache.
//!
//! Every kernel has two implementations: AVX2 + FMA, chosen at run time when the CPU has them
//! (`is_x86_feature_detected!`; no `target-cpu` flag needed), and a portable one that is used
//! everywhere else. Both are reachable through the [`Isa`] argument of the slice-level
//! functions, so tests check both against float64 references. The layers never call them
//! directly: the tensor-level operations of [`crate::ops`] choose between them and candle's
//! differentiable ops, in one place per operation.
//!
//! Threads: the calling thread plus `rayon::current_num_threads() - 1` helpers of a small pool
//! of their own that poll briefly between jobs (a decoding step is a chain of short products;
//! see `pool.rs`). A product is split into contiguous row blocks of the weight, so each thread
//! streams its own part of the matrix once.

pub mod activation;
pub mod attention;
pub mod gemm;
pub mod gemv;
pub mod moe;
pub(crate) mod pool;

use std::sync::OnceLock;

pub use half::bf16;

/// Which implementation of a kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX2 and FMA (checked at run time).
    Avx2Fma,
    /// Plain Rust, for every CPU.
    Portable,
}

impl Isa {
    /// The best implementation this CPU runs (detected once).
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    return Isa::Avx2Fma;
                }
            }
            Isa::Portable
        })
    }

    /// Every implementation this CPU can run (what the kernel tests iterate over).
    pub fn available() -> Vec<Isa> {
        let mut all = vec![Isa::Portable];
        if Isa::detect() == Isa::Avx2Fma {
            all.push(Isa::Avx2Fma);
        }
        all
    }
}

/// The element types weight matrices are stored in: f32, or bf16 widened to f32 as it is read
/// (which halves the bytes a memory-bound product reads).
pub trait WeightElem: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The value as f32 (exact for both types).
    fn to_f32(self) -> f32;
}

impl WeightElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl WeightElem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

mod sealed {
    /// Seals [`super::WeightElem`]: the kernels reinterpret weight slices as `f32` or as bf16
    /// bit patterns (`u16`) by `IS_F32`, which is sound only for these two types.
    pub trait Sealed {
        /// Whether the type is `f32` (products then read the weights in place).
        const IS_F32: bool;
    }

    impl Sealed for f32 {
        const IS_F32: bool = true;
    }

    impl Sealed for super::bf16 {
        const IS_F32: bool = false;
    }
}

/// AVX2 helpers shared by the kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::arch::x86_64::*;

    /// Sum of the 8 lanes.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub(crate) unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: register arithmetic only; AVX2 guaranteed by the caller.
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps::<1>(v);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
    }
}

/// Splits `0..rows` into at most `parts` contiguous ranges whose lengths are multiples of
/// `align` (the last one takes the rest).
pub(crate) fn split_rows(rows: usize, parts: usize, align: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    let per = rows.div_ceil(parts).div_ceil(align) * align;
    let per = per.max(align);
    (0..rows)
        .step_by(per)
        .map(|s| s..(s + per).min(rows))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rows_covers_everything_once() {
        for rows in [0, 1, 5, 6, 7, 100, 1001] {
            for parts in [1, 2, 3, 8] {
                for align in [1, 4, 6] {
                    let r = split_rows(rows, parts, align);
                    assert!(
                        r.len() <= parts.max(1) || rows == 0,
                        "{rows} {parts} {align}"
                    );
                    let mut next = 0;
                    for x in &r {
                        assert_eq!(x.start, next);
                        assert!(x.end > x.start);
                        next = x.end;
                    }
                    assert_eq!(next, rows);
                }
            }
        }
    }

    #[test]
    fn bf16_widening_is_exact() {
        for v in [0.0f32, -1.5, 3.140625, 1e-3, -65504.0] {
            let b = bf16::from_f32(v);
            assert_eq!(b.to_f32(), WeightElem::to_f32(b));
        }
    }
}

/// Random data and tolerant comparison for the kernel tests.
#[cfg(test)]
pub(crate) mod tests_support {
    /// `n` values in [-1, 1) from a small deterministic generator.
    pub(crate) fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Asserts `max |got - want| <= 1e-5 * max(1, max |want|) * sqrt(len)`-ish: float32
    /// accumulation against a float64 reference.
    pub(crate) fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                ((*g as f64) - w).abs() <= 2e-5 * scale,
                "{what}: [{i}] got {g}, want {w}"
            );
        }
    }
}
