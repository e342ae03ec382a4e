//! Routed-expert dispatch on slices, over stacked expert weights (`gate_up` `[E, 2I, H]`, gate
//! rows first; `down` `[E, H, I]`): only the chosen experts' slices are read.
//!
//! One token (decoding): the chosen experts' gate/up products run as one batch of
//! matrix-vector products (one fork-join), the SwiGLU, then their down products as a second
//! batch. Several tokens (prefill): tokens are grouped per expert, the active experts run in
//! parallel, each one matrix product over its tokens, and the results are added straight into
//! the output rows with their routing weights (no full-size scatter per expert).

use std::sync::{Mutex, PoisonError};

use super::activation::swiglu;
use super::gemv::{GemvJob, gemv_batch};
use super::{Isa, WeightElem, gemm, pool};

/// The sizes of a dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertsShape {
    /// Tokens routed.
    pub tokens: usize,
    /// Width of a token (`H`).
    pub hidden: usize,
    /// Intermediate width of one expert (`I`).
    pub inter: usize,
    /// Number of experts (`E`).
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
}

/// `out[t] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t])` with
/// `expert_e(x) = down_e (silu(gate_e x) * up_e x)`; returns `out` `[tokens, hidden]`.
///
/// # Errors
/// An expert id `>= experts` (the message names it).
///
/// # Panics
/// If a slice's length disagrees with `shape`.
#[allow(clippy::too_many_arguments)]
pub fn routed_experts<E: WeightElem>(
    isa: Isa,
    s: &ExpertsShape,
    x: &[f32],
    gate_up: &[E],
    down: &[E],
    ids: &[u32],
    weights: &[f32],
) -> Result<Vec<f32>, String> {
    let (h, i) = (s.hidden, s.inter);
    assert_eq!(x.len(), s.tokens * h, "experts: x");
    assert_eq!(gate_up.len(), s.experts * 2 * i * h, "experts: gate_up");
    assert_eq!(down.len(), s.experts * h * i, "experts: down");
    assert_eq!(ids.len(), s.tokens * s.top_k, "experts: ids");
    assert_eq!(weights.len(), ids.len(), "experts: weights");
    // Per expert: (token, routing weight), in token order.
    let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); s.experts];
    for (slot, (&e, &w)) in ids.iter().zip(weights).enumerate() {
        let e = e as usize;
        if e >= s.experts {
            return Err(format!("expert id {e} >= {} experts", s.experts));
        }
        routed[e].push((slot / s.top_k.max(1), w));
    }
    let gu_of = |e: usize| &gate_up[e * 2 * i * h..(e + 1) * 2 * i * h];
    let down_of = |e: usize| &down[e * h * i..(e + 1) * h * i];
    let mut out = vec![0f32; s.tokens * h];
    let active: Vec<usize> = (0..s.experts).filter(|&e| !routed[e].is_empty()).collect();
    if active.iter().all(|&e| routed[e].len() == 1) {
        // Every chosen expert sees one token: two batches of matrix-vector products.
        let mut gu = vec![0f32; active.len() * 2 * i];
        gemv_batch(
            isa,
            active
                .iter()
                .zip(gu.chunks_mut(2 * i))
                .map(|(&e, y)| {
                    let t = routed[e][0].0;
                    GemvJob {
                        w: gu_of(e),
                        x: &x[t * h..(t + 1) * h],
                        y,
                    }
                })
                .collect(),
        );
        let mut hidden = vec![0f32; active.len() * i];
        swiglu(isa, &gu, i, &mut hidden);
        let mut ys = vec![0f32; active.len() * h];
        gemv_batch(
            isa,
            active
                .iter()
                .zip(hidden.chunks(i.max(1)))
                .zip(ys.chunks_mut(h))
                .map(|((&e, x), y)| GemvJob {
                    w: down_of(e),
                    x,
                    y,
                })
                .collect(),
        );
        for (&e, y) in active.iter().zip(ys.chunks(h)) {
            let (t, w) = routed[e][0];
            add_scaled(&mut out[t * h..(t + 1) * h], w, y);
        }
        return Ok(out);
    }
    // Several tokens: experts run in parallel, each on one thread over its own tokens (the
    // products inside a task run serially: see `pool::parallel_for`), then the results are
    // added into the output rows in expert order.
    let results: Vec<Mutex<Vec<f32>>> = active.iter().map(|_| Mutex::new(Vec::new())).collect();
    pool::parallel_for(active.len(), |a| {
        let e = active[a];
        let rows = &routed[e];
        let m = rows.len();
        let mut xs = Vec::with_capacity(m * h);
        for &(t, _) in rows {
            xs.extend_from_slice(&x[t * h..(t + 1) * h]);
        }
        let mut gu = vec![0f32; m * 2 * i];
        gemm::matmul_t(isa, &xs, m, gu_of(e), 2 * i, None, &mut gu);
        let mut hidden = vec![0f32; m * i];
        swiglu(isa, &gu, i, &mut hidden);
        let mut ys = vec![0f32; m * h];
        gemm::matmul_t(isa, &hidden, m, down_of(e), h, None, &mut ys);
        *results[a].lock().unwrap_or_else(PoisonError::into_inner) = ys;
    });
    for (&e, ys) in active.iter().zip(results) {
        let ys = ys.into_inner().unwrap_or_else(PoisonError::into_inner);
        for (&(t, w), y) in routed[e].iter().zip(ys.chunks(h.max(1))) {
            add_scaled(&mut out[t * h..(t + 1) * h], w, y);
        }
    }
    Ok(out)
}

fn add_scaled(out: &mut [f32], w: f32, y: &[f32]) {
    out.iter_mut().zip(y).for_each(|(o, y)| *o += w * y);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16;
    use crate::tests_support::{close, random};

    #[test]
    fn routed_experts_match_a_float64_reference() {
        for isa in crate::tests_support::paths() {
            for (tokens, top_k) in [(1, 2), (5, 3), (9, 1)] {
                let s = ExpertsShape {
                    tokens,
                    hidden: 19,
                    inter: 11,
                    experts: 6,
                    top_k,
                };
                let x = random(tokens * 19, 1);
                let gu = random(6 * 22 * 19, 2);
                let down = random(6 * 19 * 11, 3);
                let ids: Vec<u32> = (0..tokens * top_k)
                    .map(|j| ((j * 7 + j / top_k) % 6) as u32)
                    .collect();
                let w = random(tokens * top_k, 4);
                // In float64, from the weights as given (f32 values).
                let reference = |gu: &[f32], down: &[f32]| {
                    let mut want = vec![0f64; tokens * 19];
                    for t in 0..tokens {
                        for j in 0..top_k {
                            let e = ids[t * top_k + j] as usize;
                            let act: Vec<f64> = (0..11)
                                .map(|r| {
                                    let dot = |row: usize| -> f64 {
                                        (0..19)
                                            .map(|c| {
                                                gu[(e * 22 + row) * 19 + c] as f64
                                                    * x[t * 19 + c] as f64
                                            })
                                            .sum()
                                    };
                                    let g = dot(r);
                                    g / (1.0 + (-g).exp()) * dot(11 + r)
                                })
                                .collect();
                            for o in 0..19 {
                                let y: f64 = (0..11)
                                    .map(|c| down[(e * 19 + o) * 11 + c] as f64 * act[c])
                                    .sum();
                                want[t * 19 + o] += w[t * top_k + j] as f64 * y;
                            }
                        }
                    }
                    want
                };
                let got = routed_experts(isa, &s, &x, &gu, &down, &ids, &w).unwrap();
                close(
                    &got,
                    &reference(&gu, &down),
                    &format!("{isa:?} f32 {tokens}x{top_k}"),
                );
                // bf16 weights are widened exactly, so against the float64 reference of the
                // rounded weights they get f32's bound, as in gemm's bf16 check: measured at
                // most 2.1e-7 of the scale on every path, against a bound of 2e-5. (The check
                // this replaced compared with the unrounded weights within 0.05 * (1 + |want|):
                // the rounding itself measured up to 1.2% there, and an error of 5% passed.)
                // k = 19 and 11 are not multiples of 32: no AMX tiles, the activations stay f32.
                let gub: Vec<bf16> = gu.iter().map(|&v| bf16::from_f32(v)).collect();
                let downb: Vec<bf16> = down.iter().map(|&v| bf16::from_f32(v)).collect();
                let got = routed_experts(isa, &s, &x, &gub, &downb, &ids, &w).unwrap();
                let widened = |v: &[bf16]| v.iter().map(|b| b.to_f32()).collect::<Vec<f32>>();
                let want = reference(&widened(&gub), &widened(&downb));
                close(&got, &want, &format!("{isa:?} bf16 {tokens}x{top_k}"));
                let bad = [6u32; 1];
                let s1 = ExpertsShape {
                    tokens: 1,
                    top_k: 1,
                    ..s
                };
                let e = routed_experts(isa, &s1, &x[..19], &gu, &down, &bad, &[1.0])
                    .err()
                    .unwrap()
                    .to_string();
                assert!(e.contains("expert id 6 >= 6 experts"), "{e}");
            }
        }
    }
}
