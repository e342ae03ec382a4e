//! Side-by-side benchmark: patchwork's models against candle-transformers 0.11 on the same
//! checkpoints, and against the memory-bandwidth limit measured in the same run.
//!
//! `cargo bench --manifest-path bench/Cargo.toml -- [--repeats N] [--prompt-len N]
//! [--decode N] [--only kernels|models] [--dir DIR]` (see PERFORMANCE.md).

use std::time::Instant;

use patchwork_models::kernels::{Isa, bf16, gemm, gemv};
use rayon::prelude::*;

/// Sum of `xs` with 8 independent AVX2 accumulators (a pure streaming read).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 8];
    let chunks = xs.chunks_exact(64);
    for c in chunks {
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: `c` holds 64 floats; lane group i reads 8 of them.
            *a = _mm256_add_ps(*a, unsafe { _mm256_loadu_ps(c.as_ptr().add(i * 8)) });
        }
    }
    let mut out = [0f32; 8];
    let mut s = acc[0];
    for a in &acc[1..] {
        s = _mm256_add_ps(s, *a);
    }
    // SAFETY: `out` holds 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

fn sum(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 detected.
        return unsafe { sum_avx2(xs) };
    }
    xs.iter().sum()
}

/// Read bandwidth in GB/s: every thread of rayon's pool streams its contiguous part of a
/// buffer much larger than the caches; the best of `reps` passes.
fn bandwidth(buf: &[f32], reps: usize) -> f64 {
    let threads = rayon::current_num_threads();
    let part = buf.len().div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..reps {
        let t = Instant::now();
        let s: f32 = buf.par_chunks(part).map(sum).sum();
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((buf.len() * 4) as f64 / dt / 1e9);
    }
    best
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn kernels(reps: usize, buf: &[f32]) {
    let isa = Isa::detect();
    println!("kernels ({isa:?}, {} threads)", rayon::current_num_threads());
    println!("  streaming read: {:.1} GB/s", bandwidth(buf, 5));
    let (n, k) = (32000usize, 1024usize);
    let w: Vec<f32> = (0..n * k).map(|i| ((i % 97) as f32 - 48.0) * 1e-3).collect();
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let x: Vec<f32> = (0..k).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut y = vec![0f32; n];
    let mut t_f32 = Vec::new();
    let mut t_bf16 = Vec::new();
    let mut t_candle = Vec::new();
    let dev = candle_core::Device::Cpu;
    let wt = candle_core::Tensor::from_slice(&w, (n, k), &dev).unwrap();
    let xt = candle_core::Tensor::from_slice(&x, (1, k), &dev).unwrap();
    for _ in 0..reps {
        let t = Instant::now();
        gemv::gemv(isa, &w, &x, &mut y);
        t_f32.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        gemv::gemv(isa, &wb, &x, &mut y);
        t_bf16.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(xt.matmul(&wt.t().unwrap()).unwrap());
        t_candle.push(t.elapsed().as_secs_f64());
    }
    let gbs = |bytes: usize, t: f64| bytes as f64 / t / 1e9;
    println!(
        "  gemv 32000x1024: f32 {:.1} GB/s, bf16 {:.1} GB/s ({:.1} GB/s f32-equivalent), candle f32 {:.1} GB/s",
        gbs(n * k * 4, median(t_f32.clone())),
        gbs(n * k * 2, median(t_bf16.clone())),
        gbs(n * k * 4, median(t_bf16)),
        gbs(n * k * 4, median(t_candle)),
    );
    for (m, n, k) in [(64usize, 5632usize, 1024usize), (64, 1024, 2816), (64, 1536, 1024), (7, 1536, 1024)] {
        let w = &w[..n * k];
        let wb = &wb[..n * k];
        let xs: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 * 0.1).collect();
        let mut out = vec![0f32; m * n];
        let wt = candle_core::Tensor::from_slice(w, (n, k), &dev).unwrap();
        let xt = candle_core::Tensor::from_slice(&xs, (m, k), &dev).unwrap();
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let t = Instant::now();
            gemm::matmul_t(isa, &xs, m, w, n, None, &mut out);
            a.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            gemm::matmul_t(isa, &xs, m, wb, n, None, &mut out);
            b.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::hint::black_box(xt.matmul(&wt.t().unwrap()).unwrap());
            c.push(t.elapsed().as_secs_f64());
        }
        let gf = |t: f64| (2 * m * n * k) as f64 / t / 1e9;
        println!(
            "  gemm {m}x{k} @ {n}x{k}^T: f32 {:.0} GFLOP/s, bf16 {:.0} GFLOP/s, candle f32 {:.0} GFLOP/s",
            gf(median(a)),
            gf(median(b)),
            gf(median(c))
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let reps: usize = arg("--repeats").map_or(5, |v| v.parse().expect("--repeats N"));
    let only = arg("--only");
    // 1 GiB: far beyond every cache.
    let buf: Vec<f32> = vec![1.0; 1 << 28];
    if only.as_deref().is_none_or(|o| o == "kernels") {
        kernels(reps, &buf);
    }
}
