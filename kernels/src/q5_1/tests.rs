//! Q5_1 blocks and products against references written from ggml's own formulas.

use half::f16;

use super::*;
use crate::blocks::{assert_product_matches, quantizes_tokens};
use crate::tests_support::random;

/// Bytes of one ggml `block_q5_1`.
const GGML: usize = 24;

/// `rows x cols / 32` ggml `block_q5_1`s of pseudo-random bits, steps and mins.
fn ggml_bytes(rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let noise = random(rows * cols / BLOCK * GGML, seed);
    let mut bytes: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
    for (i, block) in bytes.chunks_exact_mut(GGML).enumerate() {
        let d = f16::from_f32(0.01 + 0.003 * (i % 5) as f32);
        let m = f16::from_f32(-0.16 + 0.02 * (i % 7) as f32);
        block[..2].copy_from_slice(&d.to_le_bytes());
        block[2..4].copy_from_slice(&m.to_le_bytes());
    }
    bytes
}

/// ggml's `dequantize_row_q5_1`, written out.
fn ggml_dequantize(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for block in bytes.chunks_exact(GGML) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let qh = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
        let qs = &block[8..];
        let mut y = [0f32; BLOCK];
        for j in 0..16 {
            let xh0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = ((qs[j] & 0x0F) | xh0) as f32 * d + m;
            y[j + 16] = ((qs[j] >> 4) | xh1) as f32 * d + m;
        }
        out.extend_from_slice(&y);
    }
    out
}

#[test]
fn ggml_blocks_import_to_the_same_weights() {
    let (rows, cols) = (6, 96);
    let bytes = ggml_bytes(rows, cols, 3);
    let m = Q5_1Matrix::from_ggml_blocks(&bytes, rows, cols).unwrap();
    assert_eq!(m.dequantize(), ggml_dequantize(&bytes));
    assert_eq!(m.bytes(), bytes.len());
    assert!(Q5_1Matrix::from_ggml_blocks(&bytes[1..], rows, cols).is_none());
    assert!(Q5_1Matrix::from_ggml_blocks(&bytes, rows, cols + 1).is_none());
}

#[test]
fn q5_1_products_match_a_float64_reference_of_the_quantized_operands() {
    for isa in crate::tests_support::paths() {
        for (m, n, k) in [
            (1, 1, 32),
            (1, 9, 64),
            (3, 8, 96),
            (2, 33, 512),
            (5, 6, 256),
            (13, 7, 128),
        ] {
            let bytes = ggml_bytes(n, k, 11 + n as u64);
            let q = Q5_1Matrix::from_ggml_blocks(&bytes, n, k).unwrap();
            let deq = ggml_dequantize(&bytes);
            let x: Vec<f32> = random(m * k, 12).iter().map(|v| v * 3.0).collect();
            let mut out = vec![f32::NAN; m * n];
            q.matmul_t(isa, &x, m, &mut out);
            let quantized = quantizes_tokens(&q, isa, m);
            assert_product_matches((&format!("{isa:?}"), quantized), (m, n, k), &x, &deq, &out);
        }
    }
}
