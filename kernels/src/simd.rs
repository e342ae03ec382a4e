//! x86-64 helpers shared by the kernels: which VNNI forms the CPU has, horizontal sums.

use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Whether AVX-512 VNNI (with VL, for its 256-bit form) is present, checked once.
pub(crate) fn vnni() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl")
    })
}

/// Whether AVX-512 VNNI's 512-bit form is usable with byte shifts and masks (F, BW and
/// VNNI), checked once: what the integer tile kernels need.
pub(crate) fn vnni512() -> bool {
    static VNNI512: OnceLock<bool> = OnceLock::new();
    *VNNI512.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512f")
    })
}

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
