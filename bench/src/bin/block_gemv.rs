//! One token through the block formats' kernels, against the streaming read measured between
//! them: for each format, 12 matrices of 8192 x 1024 (together beyond the caches) multiplied
//! in turn, the file bytes they hold over the time, as GB/s and as a fraction of the median
//! streaming read (`patchwork_bench::bandwidth`) of the passes around it. Three rounds.
//!
//! `cargo run --release --manifest-path bench/Cargo.toml --bin block_gemv`

use std::time::Instant;

use patchwork_kernels::Isa;
use patchwork_kernels::{q4_0::Q4_0Matrix, q4_k::Q4KMatrix, q5_0::Q5_0Matrix};
use patchwork_kernels::{q6_k::Q6KMatrix, q8_0::Q8_0Matrix};

const ROWS: usize = 8192;
const COLS: usize = 1024;
const MATRICES: usize = 12;

/// Pseudo-random ggml blocks of `bytes` bytes per `weights` weights, each f16 step at `steps`
/// set to 2^-8.
fn blocks(bytes: usize, weights: usize, steps: &[usize], seed: usize) -> Vec<u8> {
    let n = ROWS * COLS / weights * bytes;
    let mut b: Vec<u8> = (0..n)
        .map(|i| ((i + seed).wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    for block in b.chunks_exact_mut(bytes) {
        for &at in steps {
            block[at..at + 2].copy_from_slice(&[0x00, 0x1c]);
        }
    }
    b
}

/// GB/s of `bytes` per product over 10 passes of the `MATRICES` products `product(i)` does.
fn gbs(bytes: usize, product: &dyn Fn(usize)) -> f64 {
    (0..MATRICES).for_each(product);
    let t = Instant::now();
    for _ in 0..10 {
        (0..MATRICES).for_each(product);
    }
    (bytes * MATRICES * 10) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let isa = Isa::detect();
    let x: Vec<f32> = (0..COLS)
        .map(|i| ((i * 40503) % 777) as f32 / 388.0 - 1.0)
        .collect();
    let stream = vec![1f32; 1 << 28];
    let q4_0: Vec<_> = (0..MATRICES)
        .map(|s| Q4_0Matrix::from_ggml_blocks(&blocks(18, 32, &[0], s), ROWS, COLS))
        .collect::<Option<_>>()
        .expect("Q4_0 blocks of the shape");
    let q5_0: Vec<_> = (0..MATRICES)
        .map(|s| Q5_0Matrix::from_ggml_blocks(&blocks(22, 32, &[0], s), ROWS, COLS))
        .collect::<Option<_>>()
        .expect("Q5_0 blocks of the shape");
    let q8_0: Vec<_> = (0..MATRICES)
        .map(|s| Q8_0Matrix::from_ggml_blocks(&blocks(34, 32, &[0], s), ROWS, COLS))
        .collect::<Option<_>>()
        .expect("Q8_0 blocks of the shape");
    let q4_k: Vec<_> = (0..MATRICES)
        .map(|s| Q4KMatrix::from_ggml_blocks(&blocks(144, 256, &[0, 2], s), ROWS, COLS))
        .collect::<Option<_>>()
        .expect("Q4_K blocks of the shape");
    let q6_k: Vec<_> = (0..MATRICES)
        .map(|s| Q6KMatrix::from_ggml_blocks(&blocks(210, 256, &[208], s), ROWS, COLS))
        .collect::<Option<_>>()
        .expect("Q6_K blocks of the shape");
    let per = |bytes: usize, weights: usize| ROWS * COLS / weights * bytes;
    println!("one token, {isa:?}: GB/s of file bytes, and over the streaming read around it");
    for round in 0..3 {
        let mut out = vec![0f32; ROWS];
        let mut line = format!("round {round}:");
        let mut report = |name: &str, bytes: usize, product: &dyn Fn(usize)| {
            let before = patchwork_bench::bandwidth(&stream, 1);
            let gb = gbs(bytes, product);
            let after = patchwork_bench::bandwidth(&stream, 1);
            let limit = (before + after) / 2.0;
            line += &format!(" {name} {gb:.1} ({:.2})", gb / limit);
        };
        let cell = std::cell::RefCell::new(&mut out);
        let mul = |f: &dyn Fn(&mut [f32])| f(&mut cell.borrow_mut());
        report("q4_0", per(18, 32), &|i| {
            mul(&|o| q4_0[i].matmul_t(isa, &x, 1, o))
        });
        report("q5_0", per(22, 32), &|i| {
            mul(&|o| q5_0[i].matmul_t(isa, &x, 1, o))
        });
        report("q8_0", per(34, 32), &|i| {
            mul(&|o| q8_0[i].matmul_t(isa, &x, 1, o))
        });
        report("q4_k", per(144, 256), &|i| {
            mul(&|o| q4_k[i].matmul_t(isa, &x, 1, o))
        });
        report("q6_k", per(210, 256), &|i| {
            mul(&|o| q6_k[i].matmul_t(isa, &x, 1, o))
        });
        println!("{line}");
    }
}
