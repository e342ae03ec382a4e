//! A float64 reference for the product on odd shapes, every path the machine has.

use super::*;
use crate::bf16;
use crate::tests_support::{close, random};

fn reference<E: WeightElem>(x: &[f32], m: usize, w: &[E], n: usize, bias: &[f32]) -> Vec<f64> {
    let k = x.len() / m;
    let mut out = Vec::with_capacity(m * n);
    for t in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|i| x[t * k + i] as f64 * w[j * k + i].to_f32() as f64)
                .sum();
            out.push(s + bias[j] as f64);
        }
    }
    out
}

#[test]
fn matmul_matches_a_float64_reference_on_odd_shapes() {
    for isa in crate::tests_support::paths() {
        for (m, n, k) in [
            (1, 5, 9),
            (2, 13, 7),
            (5, 25, 300),
            (8, 12, 16),
            (9, 7, 33),
            (17, 31, 260),
            (64, 50, 513),
            (130, 19, 40),
            (9, 13, 4100),
            (16, 48, 17),
            (32, 25, 100),
            (33, 97, 31),
            (24, 40, 64),
            (70, 33, 96),
            (53, 14, 2200),
        ] {
            let x = random(m * k, 1);
            let w = random(n * k, 2);
            let bias = random(n, 3);
            let mut out = vec![f32::NAN; m * n];
            matmul_t(isa, &x, m, &w, n, Some(&bias), &mut out);
            let what = format!("{isa:?} f32 {m}x{n}x{k}");
            close(&out, &reference(&x, m, &w, n, &bias), &what);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let mut out = vec![f32::NAN; m * n];
            matmul_t(isa, &x, m, &wb, n, None, &mut out);
            let what = format!("{isa:?} bf16 {m}x{n}x{k}");
            // The AMX product rounds the tokens to bf16 (kernels/amx.rs).
            let on_tiles = isa == Isa::Amx && m > 1 && k.is_multiple_of(32);
            let xr: Vec<f32> = if on_tiles {
                x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
            } else {
                x.clone()
            };
            close(&out, &reference(&xr, m, &wb, n, &vec![0.0; n]), &what);
        }
    }
}
