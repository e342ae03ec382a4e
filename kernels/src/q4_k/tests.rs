//! Q4_K blocks and products against references written from ggml's own formulas.

use half::f16;

use super::*;
use crate::blocks::{assert_product_matches, quantizes_tokens};
use crate::tests_support::random;

/// `rows x cols / 256` ggml `block_q4_K`s of pseudo-random quants, packed scales and mins,
/// and steps.
fn ggml_bytes(rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let noise = random(rows * cols / SUPER * GGML_BYTES, seed);
    let mut bytes: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
    for (i, block) in bytes.chunks_exact_mut(GGML_BYTES).enumerate() {
        let d = f16::from_f32(0.001 + 0.0003 * (i % 7) as f32);
        let dmin = f16::from_f32(0.002 + 0.0005 * (i % 5) as f32);
        block[..2].copy_from_slice(&d.to_le_bytes());
        block[2..4].copy_from_slice(&dmin.to_le_bytes());
    }
    bytes
}

/// ggml's `dequantize_row_q4_K` with its `get_scale_min_k4`, written out.
fn ggml_dequantize(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for block in bytes.chunks_exact(GGML_BYTES) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let min = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let (scales, mut q) = (&block[4..16], &block[16..]);
        let get_scale_min_k4 = |j: usize| -> (u8, u8) {
            if j < 4 {
                (scales[j] & 63, scales[j + 4] & 63)
            } else {
                (
                    (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
                    (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
                )
            }
        };
        let mut is = 0;
        for _ in (0..SUPER).step_by(64) {
            let (sc, m) = get_scale_min_k4(is);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(is + 1);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            out.extend(q[..32].iter().map(|&v| d1 * (v & 0xF) as f32 - m1));
            out.extend(q[..32].iter().map(|&v| d2 * (v >> 4) as f32 - m2));
            q = &q[32..];
            is += 2;
        }
    }
    out
}

#[test]
fn ggml_blocks_unpack_to_the_same_weights() {
    let (rows, cols) = (6, 512);
    let bytes = ggml_bytes(rows, cols, 5);
    let m = Q4KMatrix::from_ggml_blocks(&bytes, rows, cols).unwrap();
    assert_eq!(m.dequantize(), ggml_dequantize(&bytes));
    assert_eq!(m.bytes(), bytes.len());
    assert!(Q4KMatrix::from_ggml_blocks(&bytes[1..], rows, cols).is_none());
    assert!(Q4KMatrix::from_ggml_blocks(&bytes, rows, cols + 32).is_none());
    assert!(Q4KMatrix::from_ggml_blocks(&bytes, rows * 4, cols / 4).is_none());
}

#[test]
fn q4_k_products_match_a_float64_reference_of_the_quantized_operands() {
    for isa in crate::tests_support::paths() {
        for (m, n, k) in [
            (1, 1, 256),
            (1, 9, 512),
            (3, 8, 256),
            (2, 33, 1024),
            (5, 6, 256),
            (11, 5, 512),
            (4, 3, 256),
        ] {
            let bytes = ggml_bytes(n, k, 11 + n as u64);
            let q = Q4KMatrix::from_ggml_blocks(&bytes, n, k).unwrap();
            let deq = ggml_dequantize(&bytes);
            let x: Vec<f32> = random(m * k, 12).iter().map(|v| v * 3.0).collect();
            let mut out = vec![f32::NAN; m * n];
            q.matmul_t(isa, &x, m, &mut out);
            let quantized = quantizes_tokens(&q, isa, m);
            assert_product_matches((&format!("{isa:?}"), quantized), (m, n, k), &x, &deq, &out);
        }
    }
}
