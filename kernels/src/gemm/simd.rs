//! The AVX2 and AVX-512 blocked product: register tiles, token panels, the blocked loops.

use std::arch::x86_64::*;

use std::sync::Mutex;

use super::super::{Isa, OutPtr, WeightElem, pool};
use super::split_rows;

/// `k` block. Whole rows at the bench shapes (`k` up to 2816): with weights coming from
/// memory, long row streams beat L1-sized blocks (PERFORMANCE.md).
const KC: usize = 4096;
/// Tokens per `m` block: their packed panels of a `k` block (`MC x KC` floats) stay in L2.
const MC: usize = 128;
/// Weight rows per `n` block: the output block (`MC x NC`) stays in L1/L2 while the `k`
/// blocks accumulate into it. A multiple of every tile's `MR`.
const NC: usize = 96;

/// A register tile: `MR` weight rows by `NV` vectors of `LANES` tokens.
pub(super) trait Tile {
    /// Floats per vector register.
    const LANES: usize;
    /// Token vectors per tile.
    const NV: usize;
    /// Weight rows per tile.
    const MR: usize;
    /// Adds (or stores, when `first`) a tile of `rows <= MR` weight rows: `c[t * ldc + r]
    /// (+)= sum_kk w[r * ws + kk] * xp[kk * NV * LANES + t]` for `t < valid`.
    ///
    /// # Safety
    /// The ISA of the tile available; `w` readable at `r * ws + kk` for `r < rows`,
    /// `kk < kc`; `xp` readable for `kc * NV * LANES` floats; `c` writable at
    /// `t * ldc + r` for `t < valid`, `r < rows`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        rows: usize,
        w: *const f32,
        ws: usize,
        xp: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        valid: usize,
        first: bool,
    );

    /// `dst = src` as f32 (bf16 weights widened for a tile), vectorised for the tile's ISA.
    ///
    /// # Safety
    /// The ISA of the tile available.
    unsafe fn widen<E: WeightElem>(src: &[E], dst: &mut [f32]);
}

/// Widens `src` into `dst` (compiled per ISA by the callers' `target_feature`).
#[inline(always)]
fn widen_into<E: WeightElem>(src: &[E], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// [`widen_into`] with AVX2.
///
/// # Safety
/// AVX2 available.
#[target_feature(enable = "avx2")]
unsafe fn widen_avx2<E: WeightElem>(src: &[E], dst: &mut [f32]) {
    widen_into(src, dst)
}

/// [`widen_into`] with AVX-512F.
///
/// # Safety
/// AVX-512F available.
#[target_feature(enable = "avx512f,avx2")]
unsafe fn widen_avx512<E: WeightElem>(src: &[E], dst: &mut [f32]) {
    widen_into(src, dst)
}

/// AVX2 + FMA tiles: 8 lanes; `NV` x `MR` accumulators of the 16 registers.
pub(super) struct Avx2<const NV: usize, const MR: usize>;
/// AVX-512F tiles: 16 lanes; `NV` x `MR` accumulators of the 32 registers.
pub(super) struct Avx512<const NV: usize, const MR: usize>;

/// `Tile` for one ISA: `LANES` floats per register, tiles of at most `MAX` accumulators
/// (`NV * MR`), each row count dispatched to `$kernel` compiled for it, widening by
/// `$widen`.
macro_rules! impl_tile {
    ($isa:ident, $lanes:literal, $max:literal, $kernel:ident, $widen:ident, $($r:literal)*) => {
        impl<const NV: usize, const MR: usize> Tile for $isa<NV, MR> {
            const LANES: usize = $lanes;
            const NV: usize = NV;
            const MR: usize = MR;
            #[inline(always)]
            unsafe fn tile(
                rows: usize,
                w: *const f32,
                ws: usize,
                xp: *const f32,
                kc: usize,
                c: *mut f32,
                ldc: usize,
                valid: usize,
                first: bool,
            ) {
                debug_assert!(rows <= MR && NV * MR <= $max);
                match rows {
                    // SAFETY: as the trait requires.
                    $($r => unsafe { $kernel::<NV, $r>(w, ws, xp, kc, c, ldc, valid, first) },)*
                    rows => unreachable!("tile of {rows} rows"),
                }
            }
            #[inline(always)]
            unsafe fn widen<E: WeightElem>(src: &[E], dst: &mut [f32]) {
                // SAFETY: as the trait requires.
                unsafe { $widen(src, dst) }
            }
        }
    };
}

impl_tile!(Avx2, 8, 12, kernel_avx2, widen_avx2, 1 2 3 4 5 6 7 8 9 10 11 12);
impl_tile!(Avx512, 16, 24, kernel_avx512, widen_avx512,
    1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24);

/// Work that runs with whichever tile [`with_tile`] chooses.
pub(super) trait TileJob {
    type Out;
    fn run<T: Tile>(self) -> Self::Out;
}

/// Runs `job` with the tile for `m` tokens of `k` inputs on `isa` (AVX2 or AVX-512,
/// available). AVX2: few tokens get one vector of 8 tokens by 12 weight rows (13 loads, 12 FMAs
/// per step), more two vectors by 6 rows (8 loads, 12 FMAs). AVX-512: up to 8 tokens as AVX2,
/// then one vector of 16 tokens by 24 rows, two by 12, three by 8 (to 48 tokens); from there
/// four by 6 while a 64-token panel (`64 x k` floats) stays within 512 KiB of L2, two by 12
/// beyond (measured on 64 tokens: four by 6 142-170 GMAC/s where `k` is 1024 against 124-130,
/// two by 12 112-117 where it is 2816 against 88-101; PERFORMANCE.md).
pub(super) fn with_tile<J: TileJob>(isa: Isa, (m, k): (usize, usize), job: J) -> J::Out {
    if isa == Isa::Avx512 {
        if m <= 8 {
            job.run::<Avx2<1, 12>>()
        } else if m <= 16 {
            job.run::<Avx512<1, 24>>()
        } else if m <= 32 {
            job.run::<Avx512<2, 12>>()
        } else if m <= 48 {
            job.run::<Avx512<3, 8>>()
        } else if k <= PANEL_K {
            job.run::<Avx512<4, 6>>()
        } else {
            job.run::<Avx512<2, 12>>()
        }
    } else if m <= 8 {
        job.run::<Avx2<1, 12>>()
    } else {
        job.run::<Avx2<2, 6>>()
    }
}

/// The widest `k` for which a 64-token panel (`64 x k` floats) fits 512 KiB.
const PANEL_K: usize = 2048;

/// The tokens per packed panel of the chosen tile.
pub(super) struct PanelWidth;

impl TileJob for PanelWidth {
    type Out = usize;
    fn run<T: Tile>(self) -> usize {
        T::NV * T::LANES
    }
}

/// Packs `x` (`[m, k]`) in panels of `width` tokens: panel p, step kk, lane j =
/// x[p * width + j][kk] (zero past m).
pub(super) fn pack(x: &[f32], m: usize, k: usize, width: usize) -> Vec<f32> {
    let panels = m.div_ceil(width);
    let mut xp = vec![0f32; panels * k * width];
    let chunks: Vec<Mutex<&mut [f32]>> = xp.chunks_mut(k * width).map(Mutex::new).collect();
    pool::parallel_for(chunks.len(), |p| {
        let mut panel = chunks[p]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rows = width.min(m - p * width);
        for (kk, lanes) in panel.chunks_exact_mut(width).enumerate() {
            for (j, lane) in lanes[..rows].iter_mut().enumerate() {
                *lane = x[(p * width + j) * k + kk];
            }
        }
    });
    xp
}

/// One product on packed tokens.
pub(super) struct Product<'a, E> {
    pub(super) xp: &'a [f32],
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) w: &'a [E],
    pub(super) n: usize,
    pub(super) out: &'a mut [f32],
}

impl<E: WeightElem> TileJob for Product<'_, E> {
    type Out = ();
    fn run<T: Tile>(self) {
        run::<E, T>(self.xp, self.m, self.k, self.w, self.n, self.out)
    }
}

/// The blocked product with tiles `T` on tokens packed for them ([`pack`] with `T`'s
/// panel width); the caller has checked that `T`'s ISA is available.
fn run<E: WeightElem, T: Tile>(xp: &[f32], m: usize, k: usize, w: &[E], n: usize, out: &mut [f32]) {
    let nr = T::NV * T::LANES;
    let mr = T::MR;
    debug_assert_eq!(xp.len(), m.div_ceil(nr) * k * nr);
    // No zeroing of `out`: the first `k` block of every tile stores, the later ones add.
    let ptr = OutPtr(out.as_mut_ptr());
    // Eight ranges per thread, taken dynamically: a thread that is preempted for a while
    // does not hold the others up, and the last range leaves little idle time behind it.
    let ranges = split_rows(n, rayon::current_num_threads() * 8, mr);
    let body = |cols: std::ops::Range<usize>| {
        let mut scratch = vec![0f32; if E::IS_F32 { 0 } else { mr * KC }];
        for c0 in cols.clone().step_by(NC) {
            let c1 = (c0 + NC).min(cols.end);
            for m0 in (0..m).step_by(MC) {
                let m1 = (m0 + MC).min(m);
                for k0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - k0);
                    for n0 in (c0..c1).step_by(mr) {
                        let rows = mr.min(c1 - n0);
                        let (wp, ws) = if E::IS_F32 {
                            // SAFETY: E is f32 (IS_F32 is true only for f32, the trait is
                            // sealed), so the cast reinterprets nothing; the offset is in
                            // bounds (n0 < n, k0 < k).
                            (unsafe { (w.as_ptr() as *const f32).add(n0 * k + k0) }, k)
                        } else {
                            for r in 0..rows {
                                let src = &w[(n0 + r) * k + k0..(n0 + r) * k + k0 + kc];
                                // SAFETY: T's ISA was detected by the caller.
                                unsafe { T::widen(src, &mut scratch[r * kc..(r + 1) * kc]) };
                            }
                            (scratch.as_ptr(), kc)
                        };
                        for t0 in (m0..m1).step_by(nr) {
                            let valid = nr.min(m1 - t0);
                            // SAFETY: T's ISA was detected by the caller (`Isa::capped`);
                            // rows `n0..n0 + rows` and steps `k0..k0 + kc` are in bounds of
                            // `w` (or of the scratch copy); the packed panel holds `k * nr`
                            // floats from `(t0 / nr) * k * nr`; the output tile rows
                            // `t0..t0 + valid`, columns `n0..n0 + rows` are in `out` and
                            // belong to this task's column range only.
                            unsafe {
                                let xpp = xp.as_ptr().add((t0 / nr) * k * nr + k0 * nr);
                                let c = ptr.get().add(t0 * n + n0);
                                T::tile(rows, wp, ws, xpp, kc, c, n, valid, k0 == 0);
                            }
                        }
                    }
                }
            }
        }
    };
    pool::parallel_for(ranges.len(), |i| body(ranges[i].clone()));
}

/// Writes the accumulated tile `tmp` (row `r`, lane `t`) to the output, transposed:
/// `c[t * ldc + r]` for `t < valid`; stores when `first`, adds otherwise.
///
/// # Safety
/// `c` writable at `t * ldc + r` for `t < valid`, `r < R`; `valid <= LANES`.
#[inline(always)]
unsafe fn write_tile<const R: usize, const LANES: usize>(
    tmp: &[[f32; LANES]; R],
    c: *mut f32,
    ldc: usize,
    valid: usize,
    first: bool,
) {
    // SAFETY: in bounds as the caller guarantees.
    unsafe {
        for t in 0..valid {
            let row = c.add(t * ldc);
            if first {
                for (r, lanes) in tmp.iter().enumerate() {
                    *row.add(r) = lanes[t];
                }
            } else {
                for (r, lanes) in tmp.iter().enumerate() {
                    *row.add(r) += lanes[t];
                }
            }
        }
    }
}

/// The AVX2 tile of `R` rows (see [`Tile::tile`]).
///
/// # Safety
/// As [`Tile::tile`], with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn kernel_avx2<const NV: usize, const R: usize>(
    w: *const f32,
    ws: usize,
    xp: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    valid: usize,
    first: bool,
) {
    // SAFETY: every pointer offset below is within the bounds the caller guarantees.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); NV]; R];
        let rows: [*const f32; R] = std::array::from_fn(|r| w.add(r * ws));
        for kk in 0..kc {
            let xv: [__m256; NV] =
                std::array::from_fn(|v| _mm256_loadu_ps(xp.add(kk * NV * 8 + v * 8)));
            for r in 0..R {
                let b = _mm256_broadcast_ss(&*rows[r].add(kk));
                for v in 0..NV {
                    acc[r][v] = _mm256_fmadd_ps(b, xv[v], acc[r][v]);
                }
            }
        }
        let mut tmp = [[0f32; 16]; R];
        for r in 0..R {
            for v in 0..NV {
                _mm256_storeu_ps(tmp[r].as_mut_ptr().add(v * 8), acc[r][v]);
            }
        }
        write_tile(&tmp, c, ldc, valid, first);
    }
}

/// The AVX-512 tile of `R` rows (see [`Tile::tile`]).
///
/// # Safety
/// As [`Tile::tile`], with AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn kernel_avx512<const NV: usize, const R: usize>(
    w: *const f32,
    ws: usize,
    xp: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    valid: usize,
    first: bool,
) {
    // SAFETY: every pointer offset below is within the bounds the caller guarantees.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        let rows: [*const f32; R] = std::array::from_fn(|r| w.add(r * ws));
        for kk in 0..kc {
            let xv: [__m512; NV] =
                std::array::from_fn(|v| _mm512_loadu_ps(xp.add(kk * NV * 16 + v * 16)));
            for r in 0..R {
                let b = _mm512_set1_ps(*rows[r].add(kk));
                for v in 0..NV {
                    acc[r][v] = _mm512_fmadd_ps(b, xv[v], acc[r][v]);
                }
            }
        }
        let mut tmp = [[0f32; 64]; R];
        for r in 0..R {
            for v in 0..NV {
                _mm512_storeu_ps(tmp[r].as_mut_ptr().add(v * 16), acc[r][v]);
            }
        }
        write_tile(&tmp, c, ldc, valid, first);
    }
}
