//! The matrix-vector products against a float64 reference, on every path the machine has.

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
