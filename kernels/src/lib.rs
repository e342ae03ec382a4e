#![warn(missing_docs)]
//! CPU kernels for the hot paths of the models: matrix-vector and matrix-matrix products
//! against weight matrices stored `[out, in]` (f32, bf16 widened on the fly or on AMX tiles,
//! Q8_0 blocks), the fused SwiGLU, and attention over the KV cache.
//!
//! Every kernel has a portable implementation and SIMD ones chosen at run time by what the
//! CPU has (`is_x86_feature_detected!`; no `target-cpu` flag needed): AVX2 + FMA everywhere,
//! AVX-512 where present, AMX for bf16-weight matrix products and AVX-512 VNNI for Q8_0 dot
//! products. All are reachable through the [`Isa`] argument of the slice-level functions (and
//! [`with_isa`] caps them for a closure), so tests check every
//! path the machine has against float64 references. The layers never call them
//! directly: the tensor-level operations of `patchwork_models::ops` choose between them and candle's
//! differentiable ops, in one place per operation.
//!
//! Threads: the calling thread plus `rayon::current_num_threads() - 1` helpers of a small pool
//! of their own that poll briefly between jobs (a decoding step is a chain of short products;
//! see `pool.rs`). A product is split into contiguous row blocks of the weight, so each thread
//! streams its own part of the matrix once.

pub mod activation;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
pub mod attention;
pub(crate) mod blocks;
pub mod gemm;
pub mod gemv;
pub mod moe;
pub(crate) mod pool;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q6_k;
pub mod q8_0;

use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    /// The cap [`with_isa`] sets on this thread.
    static CAP: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// Runs `f` with the kernels it calls on this thread capped at `isa` (what [`Isa::detect`]
/// returns there): the widening bf16 product instead of AMX's (`Isa::Avx512`), which rounds
/// the activations to bf16, or a narrower path to compare against, without a process-wide
/// `PATCHWORK_ISA`. Nests (the innermost cap applies); the previous cap comes back when `f`
/// returns or panics.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0;
            // A thread-local being torn down at thread exit has nothing to restore.
            let _ = CAP.try_with(|c| c.set(previous));
        }
    }
    let previous = CAP.with(|c| c.replace(Some(isa)));
    let _restore = Restore(previous);
    f()
}

pub use blocks::BlockMatrix;
pub use half::bf16;

/// Which implementation of a kernel runs, from the narrowest to the widest (a wider one implies
/// the narrower ones are available too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, for every CPU.
    Portable,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// x86-64 with AVX-512F (and AVX2, FMA).
    Avx512,
    /// x86-64 Linux with AVX-512F and AMX-BF16: bf16-weight matrix products on the tile unit,
    /// the activations rounded to bf16 (`amx.rs`); everything else as [`Isa::Avx512`].
    Amx,
}

impl Isa {
    /// The widest implementation this CPU runs, detected once, or the one named by the
    /// `PATCHWORK_ISA` environment variable (`portable`, `avx2`, `avx512` or `amx`) when that is
    /// narrower: a way to measure or test a narrower path in a whole process. A name the CPU
    /// cannot run, or an unknown one, is ignored with a warning. Inside [`with_isa`], at most
    /// the cap it sets on this thread.
    pub fn detect() -> Isa {
        let detected = Isa::detect_for_process();
        CAP.with(Cell::get)
            .map_or(detected, |cap| detected.min(cap))
    }

    /// [`Isa::detect`] without the thread's cap.
    fn detect_for_process() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let widest = Isa::widest_supported();
            match std::env::var("PATCHWORK_ISA") {
                Err(_) => widest,
                Ok(name) => match Isa::from_name(&name) {
                    Some(isa) if isa <= widest => isa,
                    Some(_) | None => {
                        tracing::warn!(
                            "PATCHWORK_ISA={name:?} ignored: this CPU runs portable to {}",
                            widest.name()
                        );
                        widest
                    }
                },
            }
        })
    }

    /// The widest implementation the CPU supports, whatever `PATCHWORK_ISA` says.
    fn widest_supported() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                #[cfg(target_os = "linux")]
                if amx::available() {
                    return Isa::Amx;
                }
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    }

    /// Every implementation, from the narrowest.
    const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2Fma, Isa::Avx512, Isa::Amx];

    /// The lower-case name (`portable`, `avx2`, `avx512`, `amx`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
        }
    }

    /// The implementation called `name` (as [`Isa::name`] writes it).
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == name.trim().to_ascii_lowercase())
    }

    /// Every implementation this CPU can run (what the kernel tests iterate over): the
    /// supported ones, whatever `PATCHWORK_ISA` says.
    pub fn available() -> Vec<Isa> {
        let widest = Isa::widest_supported();
        Isa::ALL.into_iter().filter(|isa| *isa <= widest).collect()
    }

    /// What a kernel whose widest implementation is `widest` runs when asked for `self`:
    /// the narrower of the two, and the portable one when the CPU cannot run `self`.
    pub(crate) fn capped(self, widest: Isa) -> Isa {
        if self <= Isa::widest_supported() {
            self.min(widest)
        } else {
            Isa::Portable
        }
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
        /// The slice as bf16, when it is (the AMX product takes bf16 weights only).
        fn as_bf16(weights: &[Self]) -> Option<&[super::bf16]>
        where
            Self: Sized;
    }

    impl Sealed for f32 {
        const IS_F32: bool = true;
        fn as_bf16(_: &[f32]) -> Option<&[super::bf16]> {
            None
        }
    }

    impl Sealed for super::bf16 {
        const IS_F32: bool = false;
        fn as_bf16(weights: &[super::bf16]) -> Option<&[super::bf16]> {
            Some(weights)
        }
    }
}

/// x86-64 helpers shared by the kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd;

/// An output pointer the row-range tasks of a product share; each task writes a disjoint set of
/// columns.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: the products that share one give their tasks disjoint column ranges of the output,
// and the pointer outlives them (the parallel loop ends before the product returns).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
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
    fn isa_names_round_trip_and_paths_are_ordered() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
        }
        assert_eq!(Isa::from_name(" AVX2 "), Some(Isa::Avx2Fma));
        assert_eq!(Isa::from_name("sse"), None);
        let available = tests_support::paths();
        eprintln!("kernel paths this CPU runs: {available:?}");
        assert_eq!(available[0], Isa::Portable);
        assert!(available.windows(2).all(|w| w[0] < w[1]));
        assert!(available.contains(&Isa::detect()));
        // A kernel whose widest path is AVX2 runs AVX2 when asked for AVX-512, and a path
        // the CPU lacks falls back to the portable one.
        let widest = *available.last().unwrap();
        assert_eq!(widest.capped(Isa::Avx2Fma), widest.min(Isa::Avx2Fma));
        if widest < Isa::Avx512 {
            assert_eq!(Isa::Avx512.capped(Isa::Avx512), Isa::Portable);
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

/// Random data, tolerant comparison and the paths to run, for the kernel tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::Isa;

    /// The paths the kernel tests run here, [`Isa::available`], after saying once per test
    /// process which paths this CPU cannot run (`kernel paths not run on this CPU: amx`), on
    /// stderr as it is, not the test harness's captured output: a plain `cargo test` shows it.
    pub(crate) fn paths() -> Vec<Isa> {
        static SAID: std::sync::Once = std::sync::Once::new();
        let available = Isa::available();
        let not_run: Vec<&str> = Isa::ALL
            .into_iter()
            .filter(|isa| !available.contains(isa))
            .map(Isa::name)
            .collect();
        if !not_run.is_empty() {
            SAID.call_once(|| {
                use std::io::Write;
                let ran: Vec<&str> = available.iter().map(|isa| isa.name()).collect();
                // Written to the process's stderr directly: libtest captures only `eprintln!`.
                let _ = writeln!(
                    std::io::stderr(),
                    "kernel paths not run on this CPU: {} (the kernel tests ran {})",
                    not_run.join(", "),
                    ran.join(", ")
                );
            });
        }
        available
    }

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
