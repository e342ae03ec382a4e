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
mod avx2;

#[cfg(target_arch = "x86_64")]
mod avx2_bf16;

#[cfg(target_arch = "x86_64")]
use avx2_bf16::gemv_rows_bf16;

/// AVX-512 rows: 16 lanes, each thread's block of rows read as one stream with the lines ahead
/// prefetched (a single stream per core runs well below the memory bandwidth otherwise).
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;
