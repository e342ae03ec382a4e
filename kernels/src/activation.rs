//! Element-wise kernels: a vectorised `exp`, and the fused SwiGLU `silu(gate) * up` over the
//! output of a fused gate/up projection (one pass, no intermediate tensors).

use std::sync::Mutex;

use super::{Isa, pool};

/// `out[r][i] = silu(gu[r][i]) * gu[r][inter + i]` for every row `r` of `gu`
/// (`[rows, 2 * inter]`, gate columns first, as the fused projection and the stacked experts
/// lay them out); `out` is `[rows, inter]`. `silu(g) = g / (1 + exp(-g))`, as candle computes it.
///
/// # Panics
/// If `gu.len() != 2 * out.len()` or `out.len()` is not a multiple of `inter`.
pub fn swiglu(isa: Isa, gu: &[f32], inter: usize, out: &mut [f32]) {
    assert_eq!(
        gu.len(),
        2 * out.len(),
        "swiglu: gate/up is not twice the output"
    );
    if inter == 0 {
        return;
    }
    assert!(
        out.len().is_multiple_of(inter),
        "swiglu: output is not rows x inter"
    );
    let rows = out.len() / inter;
    let row = |(o, g): (&mut [f32], &[f32])| swiglu_row(isa, &g[..inter], &g[inter..], o);
    if rows >= 8 {
        let outs: Vec<Mutex<&mut [f32]>> = out.chunks_mut(inter).map(Mutex::new).collect();
        pool::parallel_for(rows, |r| {
            let mut o = outs[r]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            row((&mut o, &gu[r * 2 * inter..(r + 1) * 2 * inter]));
        });
    } else {
        out.chunks_mut(inter)
            .zip(gu.chunks(2 * inter))
            .for_each(row);
    }
}

fn swiglu_row(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    match isa.capped(Isa::Avx512) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            // SAFETY: AVX-512F was detected; the three slices have the same length.
            unsafe { avx512::swiglu_row(gate, up, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            // SAFETY: AVX2 and FMA were detected; the three slices have the same length.
            unsafe { avx2::swiglu_row(gate, up, out) }
        }
        _ => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        }
    }
}

/// `x[i] = exp(x[i])` (relative error about 2e-7 on the SIMD paths; `-inf` gives 0).
pub fn exp_in_place(isa: Isa, x: &mut [f32]) {
    match isa.capped(Isa::Avx512) {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            // SAFETY: AVX-512F was detected.
            unsafe { avx512::exp_in_place(x) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            // SAFETY: AVX2 and FMA were detected.
            unsafe { avx2::exp_in_place(x) }
        }
        _ => x.iter_mut().for_each(|v| *v = v.exp()),
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// `exp` of 8 lanes: `2^n * p(r)` with `x = n ln2 + r`, `|r| <= ln2 / 2`, and a degree-6
    /// polynomial for `exp(r)`; inputs below -87.3 give 0 (as `exp` underflows), above 88.7 `inf`.
    ///
    /// # Safety
    /// AVX2 and FMA available.
    #[inline(always)]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        // SAFETY: register arithmetic only.
        unsafe {
            let hi = _mm256_set1_ps(88.72283);
            let lo = _mm256_set1_ps(-87.33654);
            let xc = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            );
            // r = x - n ln2, in two parts for precision.
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), xc);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
            let mut p = _mm256_set1_ps(1.0 / 720.0);
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 120.0));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 24.0));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 6.0));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
            // 2^n, split in two factors so n = 128 (x near the top) does not overflow the
            // exponent field.
            let ni = _mm256_cvtps_epi32(n);
            let half = _mm256_srai_epi32::<1>(ni);
            let rest = _mm256_sub_epi32(ni, half);
            let bias = _mm256_set1_epi32(127);
            let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(half, bias)));
            let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(rest, bias)));
            let y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
            // Below the range: exactly 0 (covers -inf).
            let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
            let y = _mm256_andnot_ps(under, y);
            // Above the range: inf; NaN stays NaN.
            let over = _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi);
            let y = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), over);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
            _mm256_blendv_ps(y, x, nan)
        }
    }

    /// # Safety
    /// AVX2 and FMA available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_in_place(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 floats.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), exp8(_mm256_loadu_ps(c.as_ptr()))) };
        }
        let rest = chunks.into_remainder();
        let mut buf = [0f32; 8];
        buf[..rest.len()].copy_from_slice(rest);
        // SAFETY: `buf` holds 8 floats.
        unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), exp8(_mm256_loadu_ps(buf.as_ptr()))) };
        let n = rest.len();
        rest.copy_from_slice(&buf[..n]);
    }

    /// # Safety
    /// AVX2 and FMA available; the slices have equal lengths.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn swiglu_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len();
        let n8 = n / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 <= n for all three slices.
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
                let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
            }
            i += 8;
        }
        for j in n8..n {
            let g = gate[j];
            out[j] = g / (1.0 + (-g).exp()) * up[j];
        }
    }
}

/// The AVX-512 forms of the AVX2 kernels: the same polynomial, 16 lanes, masks for the ends of
/// the range.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `exp` of 16 lanes, as [`super::avx2::exp8`] computes it for 8.
    ///
    /// # Safety
    /// AVX-512F available.
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        // SAFETY: register arithmetic only.
        unsafe {
            let hi = _mm512_set1_ps(88.72283);
            let lo = _mm512_set1_ps(-87.33654);
            let xc = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), xc);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
            let mut p = _mm512_set1_ps(1.0 / 720.0);
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 120.0));
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 24.0));
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 6.0));
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
            let ni = _mm512_cvtps_epi32(n);
            let half = _mm512_srai_epi32::<1>(ni);
            let rest = _mm512_sub_epi32(ni, half);
            let bias = _mm512_set1_epi32(127);
            let s1 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(half, bias)));
            let s2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(rest, bias)));
            let y = _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
            let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo);
            let y = _mm512_mask_blend_ps(under, y, _mm512_setzero_ps());
            let over = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, hi);
            let y = _mm512_mask_blend_ps(over, y, _mm512_set1_ps(f32::INFINITY));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            _mm512_mask_blend_ps(nan, y, x)
        }
    }

    /// # Safety
    /// AVX-512F available.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn exp_in_place(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            // SAFETY: `c` holds 16 floats.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), exp16(_mm512_loadu_ps(c.as_ptr()))) };
        }
        let rest = chunks.into_remainder();
        let mask: __mmask16 = ((1u32 << rest.len()) - 1) as __mmask16;
        // SAFETY: the masked lanes are the `rest.len() < 16` floats of `rest`.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, rest.as_ptr());
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), mask, exp16(v));
        }
    }

    /// # Safety
    /// AVX-512F available; the slices have equal lengths.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn swiglu_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len();
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < n {
            let lanes = 16.min(n - i);
            let mask: __mmask16 = ((1u32 << lanes) - 1) as __mmask16;
            // SAFETY: the masked lanes are `i..i + lanes <= n` of all three slices.
            unsafe {
                let g = _mm512_maskz_loadu_ps(mask, gate.as_ptr().add(i));
                let u = _mm512_maskz_loadu_ps(mask, up.as_ptr().add(i));
                let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
                let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, _mm512_mul_ps(s, u));
            }
            i += lanes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::random;

    #[test]
    fn exp_matches_std_over_the_float_range() {
        let mut xs: Vec<f32> = random(999, 7).iter().map(|v| v * 90.0).collect();
        xs.extend([
            0.0,
            -0.0,
            1.0,
            -1.0,
            88.0,
            -87.0,
            -100.0,
            100.0,
            f32::NEG_INFINITY,
            0.5,
            -0.5,
        ]);
        // 1,010 values: a tail for the 8- and the 16-lane paths.
        for isa in crate::tests_support::paths() {
            let mut got = xs.clone();
            exp_in_place(isa, &mut got);
            for (x, g) in xs.iter().zip(&got) {
                let want = (*x as f64).exp();
                if want > f32::MAX as f64 {
                    assert_eq!(*g, f32::INFINITY, "{isa:?} exp({x})");
                } else {
                    let err = (*g as f64 - want).abs();
                    assert!(
                        err <= 1e-6 * want + 1e-37,
                        "{isa:?} exp({x}) = {g}, want {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn swiglu_matches_silu_times_up() {
        for isa in crate::tests_support::paths() {
            for (rows, inter) in [(1, 1), (1, 13), (3, 8), (9, 37), (20, 64)] {
                let gu: Vec<f32> = random(rows * 2 * inter, 3)
                    .iter()
                    .map(|v| v * 12.0)
                    .collect();
                let mut out = vec![f32::NAN; rows * inter];
                swiglu(isa, &gu, inter, &mut out);
                for r in 0..rows {
                    for i in 0..inter {
                        let g = gu[r * 2 * inter + i] as f64;
                        let u = gu[r * 2 * inter + inter + i] as f64;
                        let want = g / (1.0 + (-g).exp()) * u;
                        let got = out[r * inter + i] as f64;
                        assert!(
                            (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                            "{isa:?} [{r},{i}] {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
