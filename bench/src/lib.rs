//! What the benchmarks share: the memory-bandwidth limit (a streaming read on every thread),
//! measured beside the programs it bounds. `benches/compare.rs` runs it against
//! candle-transformers; `src/bin/stream.rs` prints it for the scripts
//! (`scripts/vs_llama_cpp.sh`).

use std::time::Instant;

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
pub fn bandwidth(buf: &[f32], reps: usize) -> f64 {
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
