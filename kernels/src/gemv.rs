//! Matrix-vector products `y = W x` against a weight `W` stored `[rows, k]` row-major (f32 or
//! bf16): the whole of a decoding step's projections. Memory-bound: each weight is read once,
//! so the kernel keeps several rows' streams in flight and the driver gives each thread one
//! contiguous block of rows.

use std::sync::Mutex;

use super::{Isa, WeightElem, pool, split_rows};

/// One product of a batch: `y = w x`, with `w` `[y.len(), x.len()]` row-major.
#[derive(Debug)]
pub struct GemvJob<'a, E> {
    /// The weight rows, `y.len() * x.len()` elements.
    pub w: &'a [E],
    /// The input vector.
    pub x: &'a [f32],
    /// The output, one entry per row of `w`.
    pub y: &'a mut [f32],
}

/// Rows handed to one task at least: enough to amortise taking it.
const MIN_ROWS_PER_TASK: usize = 32;
/// Tasks per thread a batch is cut into: threads take them dynamically, so one that starts
/// late or is interrupted leaves its share to the others instead of being waited for.
const TASKS_PER_THREAD: usize = 8;

/// Runs every job of `jobs` (products with different weights and inputs, such as the chosen
/// experts of a token) in one parallel pass: the rows of all jobs are split into contiguous
/// blocks and spread over the kernel threads, so a batch costs one fork-join.
///
/// # Panics
/// If a job's `w.len() != y.len() * x.len()`.
pub fn gemv_batch<E: WeightElem>(isa: Isa, jobs: Vec<GemvJob<'_, E>>) {
    let mut tasks: Vec<GemvJob<'_, E>> = Vec::new();
    let threads = rayon::current_num_threads();
    let total: usize = jobs.iter().map(|j| j.y.len() * j.x.len()).sum();
    for job in jobs {
        let k = job.x.len();
        assert_eq!(job.w.len(), job.y.len() * k, "gemv: weight is not rows x k");
        let rows = job.y.len();
        // This job's share of the threads, by its share of the bytes.
        let share = if total == 0 {
            1
        } else {
            ((rows * k * threads * TASKS_PER_THREAD).div_ceil(total)).max(1)
        };
        let parts = share.min(rows.div_ceil(MIN_ROWS_PER_TASK)).max(1);
        let mut y = job.y;
        let mut done = 0;
        for r in split_rows(rows, parts, 4) {
            let (head, tail) = y.split_at_mut(r.len());
            y = tail;
            tasks.push(GemvJob {
                w: &job.w[done * k..(done + r.len()) * k],
                x: job.x,
                y: head,
            });
            done += r.len();
        }
    }
    if tasks.len() == 1 || threads == 1 {
        for t in tasks {
            gemv_rows(isa, t.w, t.x, t.y);
        }
    } else {
        let slots: Vec<Mutex<Option<GemvJob<'_, E>>>> =
            tasks.into_iter().map(|t| Mutex::new(Some(t))).collect();
        pool::parallel_for(slots.len(), |i| {
            let task = slots[i]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(t) = task {
                gemv_rows(isa, t.w, t.x, t.y);
            }
        });
    }
}

/// `y = w x` on the kernel threads (see [`gemv_batch`]).
///
/// # Panics
/// If `w.len() != y.len() * x.len()`.
pub fn gemv<E: WeightElem>(isa: Isa, w: &[E], x: &[f32], y: &mut [f32]) {
    gemv_batch(isa, vec![GemvJob { w, x, y }]);
}

/// `y = w x` on the calling thread.
///
/// # Panics
/// If `w.len() != y.len() * x.len()`.
pub fn gemv_rows<E: WeightElem>(isa: Isa, w: &[E], x: &[f32], y: &mut [f32]) {
    let k = x.len();
    assert_eq!(w.len(), y.len() * k, "gemv: weight is not rows x k");
    match isa.capped(Isa::Avx512) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            // The trait is sealed: E is f32 (`IS_F32`) or bf16, a 16-bit transparent wrapper.
            if E::IS_F32 {
                // SAFETY: E is f32, so this reinterprets nothing.
                let w = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const f32, w.len()) };
                // SAFETY: AVX-512F was detected on this CPU; the lengths were checked.
                unsafe { avx512::gemv_rows(w, x, y) }
            } else {
                // SAFETY: E is bf16: the same number of 16-bit patterns.
                let w = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u16, w.len()) };
                // SAFETY: AVX-512F was detected on this CPU; the lengths were checked.
                unsafe { avx512::gemv_rows_bf16(w, x, y) }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            // The trait is sealed: E is f32 (`IS_F32`) or bf16, a 16-bit transparent wrapper.
            if E::IS_F32 {
                // SAFETY: E is f32, so this reinterprets nothing.
                let w = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const f32, w.len()) };
                // SAFETY: AVX2 and FMA were detected on this CPU; the lengths were checked.
                unsafe { avx2::gemv_rows(w, x, y) }
            } else {
                // SAFETY: E is bf16: the same number of 16-bit patterns.
                let w = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u16, w.len()) };
                // SAFETY: AVX2 and FMA were detected on this CPU; the lengths were checked.
                unsafe { gemv_rows_bf16(w, x, y) }
            }
        }
        _ => portable_rows(w, x, y),
    }
}

fn portable_rows<E: WeightElem>(w: &[E], x: &[f32], y: &mut [f32]) {
    let k = x.len();
    for (row, out) in w.chunks_exact(k.max(1)).zip(y.iter_mut()) {
        let mut acc = [0f32; 8];
        let mut rc = row.chunks_exact(8);
        let mut xc = x.chunks_exact(8);
        for (r8, x8) in (&mut rc).zip(&mut xc) {
            for i in 0..8 {
                acc[i] += r8[i].to_f32() * x8[i];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (a, b) in rc.remainder().iter().zip(xc.remainder()) {
            s += a.to_f32() * b;
        }
        *out = s;
    }
    if k == 0 {
        y.fill(0.0);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::simd::hsum;

    /// Rows processed together: four streams in flight, each FMA'd with the same `x` loads.
    const R: usize = 4;

    /// # Safety
    /// AVX2 and FMA must be available; `w.len() == y.len() * x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gemv_rows(w: &[f32], x: &[f32], y: &mut [f32]) {
        let k = x.len();
        let rows = y.len();
        let wp = w.as_ptr();
        let xp = x.as_ptr();
        let k16 = k / 16 * 16;
        let mut r = 0;
        while r + R <= rows {
            // SAFETY: rows r..r+R exist (r + R <= rows), each k elements long; every load below
            // reads at offsets < k16 <= k of a row, or of x.
            unsafe {
                let p: [*const f32; R] = std::array::from_fn(|i| wp.add((r + i) * k));
                let mut acc = [[_mm256_setzero_ps(); 2]; R];
                let mut i = 0;
                while i < k16 {
                    let x0 = _mm256_loadu_ps(xp.add(i));
                    let x1 = _mm256_loadu_ps(xp.add(i + 8));
                    for j in 0..R {
                        acc[j][0] = _mm256_fmadd_ps(_mm256_loadu_ps(p[j].add(i)), x0, acc[j][0]);
                        acc[j][1] =
                            _mm256_fmadd_ps(_mm256_loadu_ps(p[j].add(i + 8)), x1, acc[j][1]);
                    }
                    i += 16;
                }
                for j in 0..R {
                    let mut s = hsum(_mm256_add_ps(acc[j][0], acc[j][1]));
                    for t in k16..k {
                        s += *p[j].add(t) * *xp.add(t);
                    }
                    *y.get_unchecked_mut(r + j) = s;
                }
            }
            r += R;
        }
        while r < rows {
            // SAFETY: row r exists; loads stay below k.
            unsafe {
                let p = wp.add(r * k);
                let mut a0 = _mm256_setzero_ps();
                let mut a1 = _mm256_setzero_ps();
                let mut i = 0;
                while i < k16 {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(i)), _mm256_loadu_ps(xp.add(i)), a0);
                    a1 = _mm256_fmadd_ps(
                        _mm256_loadu_ps(p.add(i + 8)),
                        _mm256_loadu_ps(xp.add(i + 8)),
                        a1,
                    );
                    i += 16;
                }
                let mut s = hsum(_mm256_add_ps(a0, a1));
                for t in k16..k {
                    s += *p.add(t) * *xp.add(t);
                }
                *y.get_unchecked_mut(r) = s;
            }
            r += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2_bf16 {
    use std::arch::x86_64::*;

    use super::super::simd::hsum;

    /// bf16 rows: 16 weights per 256-bit load, widened in-lane by interleaving with zeros
    /// (`unpacklo/hi_epi16`), which yields weights `0-3, 8-11` and `4-7, 12-15` of each block of
    /// 16; `x` is permuted the same way once per call, so no cross-lane shuffle is needed.
    ///
    /// # Safety
    /// AVX2 and FMA available; `w.len() == y.len() * x.len()`; `w` holds bf16 bit patterns.
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) unsafe fn gemv_rows_bf16(w: &[u16], x: &[f32], y: &mut [f32]) {
        let k = x.len();
        let k16 = k / 16 * 16;
        let mut xp = vec![0f32; k16];
        for b in (0..k16).step_by(16) {
            for j in 0..4 {
                xp[b + j] = x[b + j];
                xp[b + 4 + j] = x[b + 8 + j];
                xp[b + 8 + j] = x[b + 4 + j];
                xp[b + 12 + j] = x[b + 12 + j];
            }
        }
        for r in 0..y.len() {
            // SAFETY: row r exists; AVX2/FMA as guaranteed by the caller.
            unsafe { row_bf16(w, k, &xp, x, r, y) };
        }
    }

    /// Row `r`, read front to back as one stream. One row at a time is the fastest order for
    /// bf16 weights: rows are 2 KB at the bench shapes, and with four or eight rows in flight
    /// the hardware prefetcher followed as many short streams (`--only kernels`, same session:
    /// one row 26.9 GB/s read, two 21.4, four 21.7, eight 19.2). Four accumulators hide the
    /// FMA latency.
    ///
    /// # Safety
    /// AVX2 and FMA available; row `r` of `w` (`k` long) and `y[r]` exist; `xp` is `x`
    /// permuted as in [`gemv_rows_bf16`], `k / 16 * 16` long.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn row_bf16(w: &[u16], k: usize, xp: &[f32], x: &[f32], r: usize, y: &mut [f32]) {
        let k16 = xp.len();
        let k32 = k16 / 32 * 32;
        let widen = |v: u16| f32::from_bits((v as u32) << 16);
        // SAFETY: vector loads read 16 u16 at offsets < k16 <= k of row r (which the caller
        // guarantees exists) and 8 floats of `xp` below k16.
        unsafe {
            let p = w.as_ptr().add(r * k);
            let xpp = xp.as_ptr();
            let zero = _mm256_setzero_si256();
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < k32 {
                let v0 = _mm256_loadu_si256(p.add(i) as *const __m256i);
                let v1 = _mm256_loadu_si256(p.add(i + 16) as *const __m256i);
                let lo0 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v0));
                let hi0 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v0));
                let lo1 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v1));
                let hi1 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v1));
                acc[0] = _mm256_fmadd_ps(lo0, _mm256_loadu_ps(xpp.add(i)), acc[0]);
                acc[1] = _mm256_fmadd_ps(hi0, _mm256_loadu_ps(xpp.add(i + 8)), acc[1]);
                acc[2] = _mm256_fmadd_ps(lo1, _mm256_loadu_ps(xpp.add(i + 16)), acc[2]);
                acc[3] = _mm256_fmadd_ps(hi1, _mm256_loadu_ps(xpp.add(i + 24)), acc[3]);
                i += 32;
            }
            if i < k16 {
                let v = _mm256_loadu_si256(p.add(i) as *const __m256i);
                let lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v));
                let hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v));
                acc[0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xpp.add(i)), acc[0]);
                acc[1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xpp.add(i + 8)), acc[1]);
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut s = hsum(sum);
            for (t, &xt) in x.iter().enumerate().skip(k16) {
                s += widen(*p.add(t)) * xt;
            }
            y[r] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
use avx2_bf16::gemv_rows_bf16;

/// AVX-512 rows: 16 lanes, each thread's block of rows read as one stream with the lines ahead
/// prefetched (a single stream per core runs well below the memory bandwidth otherwise).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows processed together (f32): four streams, each FMA'd with the same `x` loads.
    const R: usize = 4;
    /// How far ahead of the loads the kernels prefetch, in bytes.
    const AHEAD: usize = 1024;

    /// # Safety
    /// AVX-512F available; `w.len() == y.len() * x.len()`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn gemv_rows(w: &[f32], x: &[f32], y: &mut [f32]) {
        let k = x.len();
        let rows = y.len();
        let k16 = k / 16 * 16;
        let mut r = 0;
        while r < rows {
            let n = R.min(rows - r);
            // SAFETY: rows r..r + n exist, each k long; vector loads read below k16 <= k of a
            // row or of x; prefetches never fault.
            unsafe {
                let p: [*const f32; R] =
                    std::array::from_fn(|j| w.as_ptr().add((r + j.min(n - 1)) * k));
                let mut acc = [_mm512_setzero_ps(); R];
                let mut i = 0;
                while i < k16 {
                    let xv = _mm512_loadu_ps(x.as_ptr().add(i));
                    for j in 0..R {
                        _mm_prefetch::<_MM_HINT_T0>(p[j].add(i).cast::<i8>().wrapping_add(AHEAD));
                        acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(p[j].add(i)), xv, acc[j]);
                    }
                    i += 16;
                }
                for (j, a) in acc.iter().enumerate().take(n) {
                    let mut s = _mm512_reduce_add_ps(*a);
                    for t in k16..k {
                        s += *p[j].add(t) * *x.get_unchecked(t);
                    }
                    *y.get_unchecked_mut(r + j) = s;
                }
            }
            r += n;
        }
    }

    /// bf16 rows, one at a time front to back (one stream), 16 weights widened per 256-bit
    /// load (`cvtepu16_epi32` then a shift into the high half).
    ///
    /// # Safety
    /// AVX-512F available; `w.len() == y.len() * x.len()`; `w` holds bf16 bit patterns.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn gemv_rows_bf16(w: &[u16], x: &[f32], y: &mut [f32]) {
        let k = x.len();
        let k32 = k / 32 * 32;
        let widen = |v: u16| f32::from_bits((v as u32) << 16);
        for (r, out) in y.iter_mut().enumerate() {
            // SAFETY: row r exists (k long); vector loads read below k32 <= k of the row or of
            // x; prefetches never fault.
            unsafe {
                let p = w.as_ptr().add(r * k);
                let load = |i: usize| {
                    let v = _mm256_loadu_si256(p.add(i).cast());
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
                };
                let mut acc = [_mm512_setzero_ps(); 2];
                let mut i = 0;
                while i < k32 {
                    _mm_prefetch::<_MM_HINT_T0>(p.add(i).cast::<i8>().wrapping_add(AHEAD));
                    acc[0] = _mm512_fmadd_ps(load(i), _mm512_loadu_ps(x.as_ptr().add(i)), acc[0]);
                    acc[1] = _mm512_fmadd_ps(
                        load(i + 16),
                        _mm512_loadu_ps(x.as_ptr().add(i + 16)),
                        acc[1],
                    );
                    i += 32;
                }
                let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
                for (t, &xt) in x.iter().enumerate().skip(k32) {
                    s += widen(*p.add(t)) * xt;
                }
                *out = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16;
    use crate::tests_support::{close, random};

    fn reference<E: WeightElem>(w: &[E], x: &[f32]) -> Vec<f64> {
        w.chunks(x.len())
            .map(|r| {
                r.iter()
                    .zip(x)
                    .map(|(a, b)| a.to_f32() as f64 * *b as f64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn gemv_matches_a_float64_reference_on_odd_shapes() {
        for isa in crate::tests_support::paths() {
            for (rows, k) in [
                (1, 1),
                (3, 7),
                (5, 17),
                (9, 33),
                (130, 1000),
                (257, 64),
                (64, 15),
                (6, 50),
            ] {
                let w = random(rows * k, 1);
                let x = random(k, 2);
                let mut y = vec![f32::NAN; rows];
                gemv(isa, &w, &x, &mut y);
                close(&y, &reference(&w, &x), &format!("{isa:?} f32 {rows}x{k}"));
                let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                let mut yb = vec![f32::NAN; rows];
                gemv(isa, &wb, &x, &mut yb);
                close(
                    &yb,
                    &reference(&wb, &x),
                    &format!("{isa:?} bf16 {rows}x{k}"),
                );
            }
        }
    }

    #[test]
    fn a_batch_runs_every_job() {
        for isa in crate::tests_support::paths() {
            let (w1, w2) = (random(300 * 40, 3), random(7 * 9, 4));
            let (x1, x2) = (random(40, 5), random(9, 6));
            let (mut y1, mut y2) = (vec![0f32; 300], vec![0f32; 7]);
            gemv_batch(
                isa,
                vec![
                    GemvJob {
                        w: &w1,
                        x: &x1,
                        y: &mut y1,
                    },
                    GemvJob {
                        w: &w2,
                        x: &x2,
                        y: &mut y2,
                    },
                ],
            );
            close(&y1, &reference(&w1, &x1), "job 1");
            close(&y2, &reference(&w2, &x2), "job 2");
        }
    }
}
