//! The shared block product's own paths.

use super::*;
use crate::q4_0::Q4_0Matrix;
use crate::tests_support::random;

/// A Q4_0 matrix that says it multiplies in tiles but keeps the default [`Groups::dot_tile`]:
/// the token-by-token fallback over a tile's block-by-block layout.
struct ByToken(Q4_0Matrix);

impl Groups for ByToken {
    fn dims(&self) -> (usize, usize) {
        self.0.shape()
    }
    fn dot_group(&self, isa: Isa, g: usize, token: Token<'_>) -> [f32; ROWS] {
        self.0.dot_group(isa, g, token)
    }
    fn dequantize_rows(&self, isa: Isa, first: usize, out: &mut [f32]) {
        self.0.dequantize_rows(isa, first, out)
    }
    fn tiles(&self, _isa: Isa) -> bool {
        true
    }
}

#[test]
fn the_token_by_token_tile_reads_each_token_of_the_tile() {
    for isa in crate::tests_support::paths() {
        for (m, n, k) in [(1, 5, 64), (7, 9, 96), (13, 4, 256)] {
            let w = random(n * k, 21);
            let x: Vec<f32> = random(m * k, 22).iter().map(|v| v * 2.0).collect();
            let q = ByToken(Q4_0Matrix::quantize(&w, n, k).unwrap());
            let deq = q.0.dequantize();
            let mut out = vec![f32::NAN; m * n];
            matmul_t_many(isa, &[&q], &x, m, &mut out);
            assert_product_matches((&format!("{isa:?}"), true), (m, n, k), &x, &deq, &out);
        }
    }
}

#[test]
fn the_tiles_run_where_the_cpu_has_avx512_vnni() {
    #[cfg(target_arch = "x86_64")]
    let has = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni");
    #[cfg(not(target_arch = "x86_64"))]
    let has = false;
    assert_eq!(vnni_tiles(Isa::Avx512), has);
    assert!(!vnni_tiles(Isa::Avx2Fma) && !vnni_tiles(Isa::Portable));
}
