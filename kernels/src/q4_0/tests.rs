//! Q4_0 blocks and products against references.

use half::f16;

use super::*;
use crate::blocks::{assert_product_matches, quantizes_tokens};
use crate::tests_support::random;

/// ggml's `block_q4_0` bytes for `w`, as its reference quantizer writes them.
fn ggml_bytes(w: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for block in w.chunks(BLOCK) {
        let mut packed = [0u8; PACKED];
        let d = quantize_block(block, &mut packed);
        bytes.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        bytes.extend_from_slice(&packed);
    }
    bytes
}

#[test]
fn ggml_blocks_import_as_stored_and_dequantize_as_ggml_does() {
    let (rows, cols) = (6, 96);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let bytes = ggml_bytes(&w);
    let m = Q4_0Matrix::from_ggml_blocks(&bytes, rows, cols).unwrap();
    let ours = Q4_0Matrix::quantize(&w, rows, cols).unwrap();
    assert_eq!(m.dequantize(), ours.dequantize());
    // ggml's dequantization, written out: d * (nibble - 8), low nibbles first.
    let deq = m.dequantize();
    for (i, block) in bytes.chunks(2 + PACKED).enumerate() {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for j in 0..PACKED {
            let (lo, hi) = (block[2 + j] & 0x0F, block[2 + j] >> 4);
            assert_eq!(deq[i * BLOCK + j], (lo as i32 - 8) as f32 * d);
            assert_eq!(deq[i * BLOCK + j + PACKED], (hi as i32 - 8) as f32 * d);
        }
    }
    // Within half a step of every weight, but for those past `+7` steps (the grid is -8..7
    // steps, the largest magnitude at -8): clamped to 7, within one step; plus the f16
    // rounding of the step.
    for (block, dblock) in w.chunks(BLOCK).zip(deq.chunks(BLOCK)) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let step = amax / 8.0;
        for (v, d) in block.iter().zip(dblock) {
            let clamped = (v.abs() - 7.0 * step) > 0.0 && (v - d).abs() > 0.5 * step;
            let bound = if clamped { step } else { 0.5 * step };
            assert!((v - d).abs() <= bound + amax * 1e-3, "{v} -> {d}");
        }
    }
    assert!(Q4_0Matrix::from_ggml_blocks(&bytes[1..], rows, cols).is_none());
    assert!(Q4_0Matrix::from_ggml_blocks(&bytes, rows, cols + 1).is_none());
    assert!(Q4_0Matrix::quantize(&w, rows, cols + 32).is_none());
    assert_eq!(m.bytes(), bytes.len());
}

#[test]
fn q4_0_products_match_a_float64_reference_of_the_quantized_operands() {
    for isa in crate::tests_support::paths() {
        for (m, n, k) in [
            (1, 1, 32),
            (1, 9, 64),
            (3, 8, 96),
            (2, 33, 1024),
            (64, 7, 32),
            (5, 13, 256),
            (8, 4, 64),
            (19, 6, 512),
        ] {
            let w = random(n * k, 17);
            let x: Vec<f32> = random(m * k, 18).iter().map(|v| v * 3.0).collect();
            let q = Q4_0Matrix::quantize(&w, n, k).unwrap();
            let deq = q.dequantize();
            let mut out = vec![f32::NAN; m * n];
            q.matmul_t(isa, &x, m, &mut out);
            let quantized = quantizes_tokens(&q, isa, m);
            assert_product_matches((&format!("{isa:?}"), quantized), (m, n, k), &x, &deq, &out);
        }
    }
}

#[test]
fn sibling_q4_0_matrices_compute_side_by_side() {
    let (m, k) = (2, 128);
    let x = random(m * k, 3);
    let parts: Vec<Q4_0Matrix> = [5, 8, 3]
        .iter()
        .enumerate()
        .map(|(i, &n)| Q4_0Matrix::quantize(&random(n * k, 40 + i as u64), n, k).unwrap())
        .collect();
    let refs: Vec<&Q4_0Matrix> = parts.iter().collect();
    let isa = Isa::detect();
    let mut many = vec![0f32; m * 16];
    Q4_0Matrix::matmul_t_many(isa, &refs, &x, m, &mut many);
    let mut col = 0;
    for p in &parts {
        let n = p.shape().0;
        let mut one = vec![0f32; m * n];
        p.matmul_t(isa, &x, m, &mut one);
        for t in 0..m {
            assert_eq!(
                &many[t * 16 + col..t * 16 + col + n],
                &one[t * n..(t + 1) * n]
            );
        }
        col += n;
    }
}

#[test]
fn a_nan_activation_reaches_the_output() {
    let (n, k) = (4, 64);
    let q = Q4_0Matrix::quantize(&random(n * k, 9), n, k).unwrap();
    let mut x = random(k, 10);
    x[5] = f32::NAN;
    for isa in crate::tests_support::paths() {
        let mut out = vec![0f32; n];
        q.matmul_t(isa, &x, 1, &mut out);
        assert!(out.iter().all(|v| v.is_nan()), "{isa:?}: {out:?}");
    }
}
