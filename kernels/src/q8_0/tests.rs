//! Q8_0 blocks and products against references.

/// Blocks as GGUF stores them come in unchanged: the same values as quantizing the
/// dequantized weights again (Q8_0 is idempotent on its own grid), and the exact scales.
#[test]
fn ggml_blocks_import_exactly() {
    let (rows, cols) = (5, 64);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let ours = Q8_0Matrix::quantize(&w, rows, cols);
    let deq = ours.dequantize();
    // ggml's block layout from our dequantized values: scale = amax / 127 in f16.
    let mut bytes = Vec::new();
    for row in deq.chunks(cols) {
        for block in row.chunks(BLOCK) {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = f16::from_f32(amax / 127.0);
            bytes.extend_from_slice(&d.to_le_bytes());
            let inv = if d.to_f32() == 0.0 {
                0.0
            } else {
                1.0 / d.to_f32()
            };
            bytes.extend(block.iter().map(|v| (v * inv).round() as i8 as u8));
        }
    }
    let imported = Q8_0Matrix::from_ggml_blocks(&bytes, rows, cols).unwrap();
    assert_eq!(imported.dequantize(), deq);
    assert!(Q8_0Matrix::from_ggml_blocks(&bytes[1..], rows, cols).is_none());
    assert!(Q8_0Matrix::from_ggml_blocks(&bytes, rows, cols + 1).is_none());
}

use super::*;
use crate::blocks::{assert_product_matches, quantizes_tokens};
use crate::tests_support::random;

#[test]
fn q8_0_products_match_a_float64_reference_of_the_quantized_operands() {
    for isa in crate::tests_support::paths() {
        for (m, n, k) in [
            (1, 1, 32),
            (1, 9, 64),
            (3, 8, 96),
            (5, 33, 1024),
            (64, 7, 32),
            (9, 6, 256),
            (2, 5, 64),
        ] {
            let w = random(n * k, 7);
            let x: Vec<f32> = random(m * k, 8).iter().map(|v| v * 3.0).collect();
            let q = Q8_0Matrix::quantize(&w, n, k);
            let deq = q.dequantize();
            // Within half a step (plus the f16 rounding of the step) of every weight.
            for (block, dblock) in w.chunks(BLOCK).zip(deq.chunks(BLOCK)) {
                let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                let bound = amax / 127.0 * (0.5 + 127.0 / 2048.0) * 1.01;
                for (v, d) in block.iter().zip(dblock) {
                    assert!((v - d).abs() <= bound, "{v} -> {d}");
                }
            }
            let mut out = vec![f32::NAN; m * n];
            q.matmul_t(isa, &x, m, &mut out);
            let quantized = quantizes_tokens(&q, isa, m);
            assert_product_matches((&format!("{isa:?}"), quantized), (m, n, k), &x, &deq, &out);
        }
    }
}
