//! The float32 matrix-vector product on AVX2.

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
                    acc[j][1] = _mm256_fmadd_ps(_mm256_loadu_ps(p[j].add(i + 8)), x1, acc[j][1]);
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
