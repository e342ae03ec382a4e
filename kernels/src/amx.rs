//! Matrix products for bf16 weights on Intel AMX's tile unit (AMX-BF16): `out = x W^T` with `W`
//! `[n, k]` bf16 read in place as the tiles' left operand and the tokens rounded to bf16 as the
//! right one, accumulating in f32. On the machines measured the tile unit multiplies about
//! twelve times as fast as AVX-512 FMAs (PERFORMANCE.md), so bf16-weight prefill takes it.
//!
//! Rounding the activations to bf16 is what PyTorch's bf16 matmul does; float32 weights never
//! take this path, and `PATCHWORK_ISA=avx512` keeps bf16 weights on the widening kernel.
//!
//! The instructions are written as inline assembly (Rust's AMX intrinsics are not stable); the
//! process asks Linux once for permission to use the tile data (`arch_prctl`), so the module
//! exists on x86-64 Linux only.

use std::sync::{Mutex, OnceLock};

use super::{OutPtr, bf16, pool, split_rows};

/// Rows of a tile, and bf16 pairs in one of its rows (a tile row is 64 bytes).
const TILE: usize = 16;
/// `k` values one tile step consumes (a tile row of bf16).
pub(crate) const K_STEP: usize = 32;
/// Weight rows per block: two tiles, each multiplied against every token panel.
const ROWS: usize = 2 * TILE;
/// How many tile steps ahead the first pass over a weight block prefetches its rows (32 row
/// streams at once are more than the hardware prefetchers follow).
const PREFETCH_STEPS: usize = 8;
/// bf16 values in one packed tile (16 rows of 32).
const TILE_ELEMS: usize = TILE * K_STEP;

/// Whether this CPU has AMX-BF16 and this process may use the tile data, checked once.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

fn detect() -> bool {
    use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
    let (max_leaf, _) = __get_cpuid_max(0);
    if max_leaf < 7 {
        return false;
    }
    // Leaf 7, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
    let edx = __cpuid_count(7, 0).edx;
    if (edx >> 22) & 1 == 0 || (edx >> 24) & 1 == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a system call that only extends the state this process may use.
    let granted = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    } == 0;
    if !granted {
        tracing::debug!("AMX present but the kernel refused the tile data permission");
    }
    granted
}

/// Whether [`matmul_t`] takes a product of inner size `k` (a whole number of tile steps).
pub(crate) fn fits(k: usize) -> bool {
    k > 0 && k.is_multiple_of(K_STEP)
}

/// `out = x w^T`: `x` `[m, k]`, `w` `[n, k]`, `out` `[m, n]`, on the kernel threads, the
/// caller having checked [`available`] and [`fits`].
pub(crate) fn matmul_t(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, out: &mut [f32]) {
    assert!(
        available() && fits(k),
        "amx::matmul_t: AMX or k unsupported"
    );
    assert!(x.len() == m * k && w.len() == n * k && out.len() == m * n);
    let panels = m.div_ceil(TILE);
    let steps = k / K_STEP;
    let xp = pack_tokens(x, m, k);
    // The last weight block, when `n` is not a whole number of blocks, copied and zero-padded
    // so that every tile load stays inside a buffer.
    let full = n / ROWS * ROWS;
    let mut tail = vec![bf16::ZERO; if full < n { ROWS * k } else { 0 }];
    tail[..(n - full) * k].copy_from_slice(&w[full * k..]);
    let ptr = OutPtr(out.as_mut_ptr());
    let ranges = split_rows(n, rayon::current_num_threads() * 8, ROWS);
    let body = |cols: std::ops::Range<usize>| {
        let _tiles = TileConfig::load();
        let mut c = [[[0f32; TILE]; TILE]; 4];
        // Each weight block once from memory, then from cache for every token panel.
        for n0 in cols.clone().step_by(ROWS) {
            let rows = ROWS.min(n - n0);
            let a = if n0 < full {
                w[n0 * k..].as_ptr()
            } else {
                tail.as_ptr()
            };
            let mut p = 0;
            while p < panels {
                let pair = p + 1 < panels;
                // SAFETY: the tiles are configured on this thread (`_tiles`); `a` holds
                // `ROWS` rows of `k` from `n0` (in `w` for whole blocks, else in `tail`);
                // `xp` holds `steps` packed tiles for panel `p` and, when `pair`, `p + 1`.
                unsafe {
                    block(
                        a.cast(),
                        k,
                        xp[p * steps * TILE_ELEMS..].as_ptr().cast(),
                        steps,
                        pair,
                        p == 0,
                        &mut c,
                    )
                };
                for (i, acc) in c.iter().enumerate() {
                    let (r0, panel) = (i / 2 * TILE, p + i % 2);
                    if (i % 2 == 1 && !pair) || r0 >= rows {
                        continue;
                    }
                    let t0 = panel * TILE;
                    let r_valid = (rows - r0).min(TILE);
                    for t in 0..TILE.min(m - t0) {
                        // SAFETY: token `t0 + t < m`, columns `n0 + r0 + r < n` of this
                        // task's range; no other task writes them.
                        unsafe {
                            let row = ptr.get().add((t0 + t) * n + n0 + r0);
                            for (r, acc_row) in acc.iter().enumerate().take(r_valid) {
                                *row.add(r) = acc_row[t];
                            }
                        }
                    }
                }
                p += 1 + pair as usize;
            }
        }
    };
    pool::parallel_for(ranges.len(), |i| body(ranges[i].clone()));
}

/// Packs the tokens as the tiles' right operand: panel `p` (16 tokens), tile step `s`, pair
/// `q`, token `t`, element `e` holds `x[16 p + t][32 s + 2 q + e]` rounded to bf16 (zero past
/// `m`), so one step of one panel is a contiguous 1 KiB tile.
fn pack_tokens(x: &[f32], m: usize, k: usize) -> Vec<bf16> {
    let panels = m.div_ceil(TILE);
    let mut xp = vec![bf16::ZERO; panels * TILE * k];
    let chunks: Vec<Mutex<&mut [bf16]>> = xp.chunks_mut(TILE * k).map(Mutex::new).collect();
    pool::parallel_for(chunks.len(), |p| {
        let mut panel = chunks[p]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for t in 0..TILE.min(m - p * TILE) {
            let row = &x[(p * TILE + t) * k..(p * TILE + t + 1) * k];
            for (s, step) in row.chunks_exact(K_STEP).enumerate() {
                let tile = &mut panel[s * TILE_ELEMS..(s + 1) * TILE_ELEMS];
                for (q, pair) in step.chunks_exact(2).enumerate() {
                    tile[q * 2 * TILE + 2 * t] = bf16::from_f32(pair[0]);
                    tile[q * 2 * TILE + 2 * t + 1] = bf16::from_f32(pair[1]);
                }
            }
        }
    });
    xp
}

/// The tile configuration every product uses: palette 1, eight tiles of 16 rows x 64 bytes.
/// Loading it claims the tile registers for this thread; dropping it releases them.
struct TileConfig;

impl TileConfig {
    fn load() -> TileConfig {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut config = Config([0; 64]);
        config.0[0] = 1;
        for tile in 0..8 {
            config.0[16 + 2 * tile] = (2 * K_STEP) as u8;
            config.0[48 + tile] = TILE as u8;
        }
        // SAFETY: AMX available (checked by the caller of `matmul_t`); the configuration is
        // 64 readable, aligned bytes describing valid palette-1 tiles.
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack));
        }
        TileConfig
    }
}

impl Drop for TileConfig {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `load`.
        unsafe { std::arch::asm!("tilerelease", options(nostack)) };
    }
}

/// One weight block (`ROWS` rows at `a`, row stride `k` bf16) against one or two token panels
/// (`pair`) at `b`: `c[0]` = rows 0..16 x panel 0, `c[2]` = rows 16..32 x panel 0, `c[1]` and
/// `c[3]` the same for panel 1; `c[tile][r][t]` is weight row `r` dotted with token `t`. The
/// first pass over a block (`prefetch`) fetches the weight rows ahead of the tile loads.
///
/// # Safety
/// The tiles configured on this thread; `a` readable for `ROWS` rows of `k = 32 steps`; `b`
/// readable for `steps` tiles (twice when `pair`).
unsafe fn block(
    a: *const u16,
    k: usize,
    b: *const u16,
    steps: usize,
    pair: bool,
    prefetch: bool,
    c: &mut [[[f32; TILE]; TILE]; 4],
) {
    use std::arch::asm;
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    let lda = 2 * k;
    let ldb = 2 * K_STEP;
    // SAFETY: every address below is within the bounds the caller guarantees.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
        let b1 = b.add(steps * TILE_ELEMS);
        for s in 0..steps {
            let a0 = a.add(s * K_STEP);
            let a1 = a0.add(TILE * k);
            let b0 = b.add(s * TILE_ELEMS);
            if prefetch && s + PREFETCH_STEPS < steps {
                for r in 0..ROWS {
                    _mm_prefetch::<_MM_HINT_T0>(a0.add(r * k + PREFETCH_STEPS * K_STEP).cast());
                }
            }
            asm!(
                "tileloadd tmm4, [{a0} + {lda} * 1]",
                "tileloadd tmm5, [{a1} + {lda} * 1]",
                "tileloadd tmm6, [{b0} + {ldb} * 1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm5, tmm6",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                b0 = in(reg) b0,
                lda = in(reg) lda,
                ldb = in(reg) ldb,
                options(nostack),
            );
            if pair {
                asm!(
                    "tileloadd tmm7, [{b1} + {ldb} * 1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    b1 = in(reg) b1.add(s * TILE_ELEMS),
                    ldb = in(reg) ldb,
                    options(nostack),
                );
            }
        }
        let ldc = 4 * TILE;
        asm!(
            "tilestored [{c0} + {ldc} * 1], tmm0",
            "tilestored [{c1} + {ldc} * 1], tmm1",
            "tilestored [{c2} + {ldc} * 1], tmm2",
            "tilestored [{c3} + {ldc} * 1], tmm3",
            c0 = in(reg) c[0].as_mut_ptr(),
            c1 = in(reg) c[1].as_mut_ptr(),
            c2 = in(reg) c[2].as_mut_ptr(),
            c3 = in(reg) c[3].as_mut_ptr(),
            ldc = in(reg) ldc,
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::{close, random};

    /// The product with both operands rounded to bf16, in float64.
    fn reference(x: &[f32], m: usize, w: &[bf16], n: usize) -> Vec<f64> {
        let k = x.len() / m;
        let xr: Vec<f64> = x.iter().map(|&v| bf16::from_f32(v).to_f64()).collect();
        (0..m * n)
            .map(|i| {
                let (t, j) = (i / n, i % n);
                (0..k)
                    .map(|kk| xr[t * k + kk] * w[j * k + kk].to_f64())
                    .sum()
            })
            .collect()
    }

    #[test]
    fn amx_product_matches_a_float64_reference_of_the_rounded_operands() {
        if !available() {
            // Says so on the uncaptured stderr, once: `kernel paths not run on this CPU: amx`.
            crate::tests_support::paths();
            return;
        }
        eprintln!("AMX-BF16 product tested on this CPU");
        for (m, n, k) in [
            (1, 1, 32),
            (2, 31, 64),
            (16, 32, 32),
            (17, 33, 96),
            (40, 70, 256),
            (130, 64, 160),
            (33, 200, 1024),
        ] {
            let x = random(m * k, 5);
            let w: Vec<bf16> = random(n * k, 6).into_iter().map(bf16::from_f32).collect();
            let mut out = vec![f32::NAN; m * n];
            matmul_t(&x, m, k, &w, n, &mut out);
            close(&out, &reference(&x, m, &w, n), &format!("amx {m}x{n}x{k}"));
        }
    }
}
