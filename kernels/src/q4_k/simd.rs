//! The Q4_K dot products' SIMD bodies (AVX2, AVX-512 VNNI): per row and super-block, the eight
//! sub-blocks' steps (`d * scale * token step`) computed in one vector and the mins' share
//! (`dmin * min * token step * Σ token quants`) accumulated in another; each 32 bytes of quants
//! unpacked to two sub-blocks of 32 nibbles and multiplied by the token's signed 8-bit quants.

use std::arch::x86_64::*;

use super::{MINS, RECORD, SCALES, STEPS, SUBS};
use crate::Isa;
use crate::blocks::simd::{dot_avx2, dot_vnni};
use crate::blocks::{BLOCK, ROWS, Token};
use crate::simd::{hsum, vnni};

/// How many records ahead the loop prefetches a group's stream.
const PREFETCH: usize = 16;

/// One group's `ROWS` rows (records `w`, interleaved by super-block) dotted with `x`.
///
/// # Safety
/// `isa` at least AVX2 and available; `w` holds `ROWS * supers * RECORD` bytes, the token
/// `supers * 8` blocks.
pub(super) unsafe fn dot_rows(isa: Isa, w: &[u8], x: Token<'_>, supers: usize) -> [f32; ROWS] {
    // SAFETY: as the caller guarantees; VNNI checked here.
    unsafe {
        if isa >= Isa::Avx512 && vnni() {
            dot_rows_vnni(w, x, supers)
        } else {
            dot_rows_avx2(w, x, supers)
        }
    }
}

/// Eight bytes at `p` widened to floats.
///
/// # Safety
/// AVX2; `p` addresses 8 readable bytes.
#[inline(always)]
unsafe fn bytes_to_f32(p: *const u8) -> __m256 {
    // SAFETY: `p` addresses 8 bytes (the caller's contract).
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast()))) }
}

/// The loop both kernels share, `dot` the unsigned-by-signed byte product summed in fours.
///
/// # Safety
/// AVX2 and FMA (and what `dot` needs) available; slices as [`dot_rows`] requires.
#[inline(always)]
unsafe fn dot_rows_with(
    w: &[u8],
    x: Token<'_>,
    supers: usize,
    dot: impl Fn(__m256i, __m256i) -> __m256i,
) -> [f32; ROWS] {
    debug_assert!(w.len() == ROWS * supers * RECORD);
    debug_assert!(x.quants.len() == supers * SUBS * BLOCK && x.sums.len() == supers * SUBS);
    // SAFETY: every offset is within the slices (the caller's contract); a prefetch past the
    // end is harmless (it never faults).
    unsafe {
        let low4 = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut mins = [_mm256_setzero_ps(); ROWS];
        let mut steps = [0f32; SUBS];
        for s in 0..supers {
            let dx = _mm256_loadu_ps(x.scales.as_ptr().add(s * SUBS));
            let sums = _mm256_cvtepi32_ps(_mm256_loadu_si256(x.sums.as_ptr().add(s * SUBS).cast()));
            let dx_sums = _mm256_mul_ps(dx, sums);
            let xq = x.quants.as_ptr().add(s * SUBS * BLOCK);
            for r in 0..ROWS {
                let rec = w.as_ptr().add((s * ROWS + r) * RECORD);
                let ahead = rec.wrapping_add(PREFETCH * RECORD);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(RECORD - 1).cast());
                let d = _mm256_set1_ps(std::ptr::read_unaligned(rec.add(STEPS).cast::<f32>()));
                let dmin =
                    _mm256_set1_ps(std::ptr::read_unaligned(rec.add(STEPS + 4).cast::<f32>()));
                let sub_steps = _mm256_mul_ps(_mm256_mul_ps(bytes_to_f32(rec.add(SCALES)), d), dx);
                _mm256_storeu_ps(steps.as_mut_ptr(), sub_steps);
                let sub_mins = _mm256_mul_ps(bytes_to_f32(rec.add(MINS)), dmin);
                mins[r] = _mm256_fmadd_ps(sub_mins, dx_sums, mins[r]);
                for pair in 0..SUBS / 2 {
                    let packed = _mm256_loadu_si256(rec.add(32 * pair).cast());
                    let lo = _mm256_and_si256(packed, low4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
                    let x0 = _mm256_loadu_si256(xq.add(2 * pair * BLOCK).cast());
                    let x1 = _mm256_loadu_si256(xq.add((2 * pair + 1) * BLOCK).cast());
                    let (s0, s1) = (steps[2 * pair], steps[2 * pair + 1]);
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(dot(lo, x0)),
                        _mm256_set1_ps(s0),
                        acc[r],
                    );
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(dot(hi, x1)),
                        _mm256_set1_ps(s1),
                        acc[r],
                    );
                }
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) - hsum(mins[r]))
    }
}

/// # Safety
/// AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(w: &[u8], x: Token<'_>, supers: usize) -> [f32; ROWS] {
    // SAFETY: `dot_rows`' contract; AVX2 and FMA enabled here. A pair of products is at most
    // 2 * 15 * 128, inside the 16-bit sums.
    unsafe { dot_rows_with(w, x, supers, |a, b| dot_avx2(a, b)) }
}

/// # Safety
/// AVX-512 VNNI and VL, AVX2 and FMA; slices as [`dot_rows`] requires.
#[target_feature(enable = "avx512vnni,avx512vl,avx2,fma")]
unsafe fn dot_rows_vnni(w: &[u8], x: Token<'_>, supers: usize) -> [f32; ROWS] {
    // SAFETY: `dot_rows`' contract; VNNI, AVX2 and FMA enabled here.
    unsafe { dot_rows_with(w, x, supers, |a, b| dot_vnni(a, b)) }
}
