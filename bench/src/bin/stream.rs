//! Prints the machine's streaming read bandwidth in GB/s: the median of `PASSES` (default 5)
//! passes over a 1 GiB buffer, each the read of every thread of rayon's pool over its part
//! (`patchwork_bench::bandwidth`). `scripts/vs_llama_cpp.sh` runs it around each file to give
//! decode its limit.

fn main() {
    let passes: usize = std::env::var("PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let buf = vec![1f32; 1 << 28];
    let mut gbs: Vec<f64> = (0..passes)
        .map(|_| patchwork_bench::bandwidth(&buf, 1))
        .collect();
    gbs.sort_by(|a, b| a.total_cmp(b));
    println!("{:.2}", gbs[gbs.len() / 2]);
}
