//! Side-by-side benchmark: patchwork's models against candle-transformers 0.11 on the same
//! checkpoints, and against the memory-bandwidth limit measured in the same run.
//!
//! `cargo bench --manifest-path bench/Cargo.toml -- [--repeats N] [--prompt-len N]
//! [--decode N] [--only kernels|models] [--dir DIR]` (see PERFORMANCE.md).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use patch_checkpoint::SaveOptions;
use patchwork_bench::bandwidth;
use patchwork_models::kernels::{Isa, bf16, gemm, gemv, q8_0};
use patchwork_models::{AutoModelForCausalLM, CausalLM, GenerationConfig, LoadOptions};
use rayon::prelude::*;

/// `n` passes of [`bandwidth`] (one pass each), in GB/s.
fn bandwidth_passes(buf: &[f32], n: usize) -> Vec<f64> {
    (0..n).map(|_| bandwidth(buf, 1)).collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn kernels(reps: usize, buf: &[f32]) {
    let isa = Isa::detect();
    println!(
        "kernels ({isa:?}, {} threads)",
        rayon::current_num_threads()
    );
    println!("  streaming read: {:.1} GB/s", bandwidth(buf, 5));
    let (n, k) = (32000usize, 1024usize);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
        .collect();
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let x: Vec<f32> = (0..k).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut y = vec![0f32; n];
    let mut t_f32 = Vec::new();
    let mut t_bf16 = Vec::new();
    let mut t_candle = Vec::new();
    let dev = candle_core::Device::Cpu;
    let wt = candle_core::Tensor::from_slice(&w, (n, k), &dev).unwrap();
    let xt = candle_core::Tensor::from_slice(&x, (1, k), &dev).unwrap();
    for _ in 0..reps {
        let t = Instant::now();
        gemv::gemv(isa, &w, &x, &mut y);
        t_f32.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        gemv::gemv(isa, &wb, &x, &mut y);
        t_bf16.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(xt.matmul(&wt.t().unwrap()).unwrap());
        t_candle.push(t.elapsed().as_secs_f64());
    }
    let gbs = |bytes: usize, t: f64| bytes as f64 / t / 1e9;
    println!(
        "  gemv 32000x1024: f32 {:.1} GB/s, bf16 {:.1} GB/s ({:.1} GB/s f32-equivalent), candle f32 {:.1} GB/s",
        gbs(n * k * 4, median(&t_f32)),
        gbs(n * k * 2, median(&t_bf16)),
        gbs(n * k * 4, median(&t_bf16)),
        gbs(n * k * 4, median(&t_candle)),
    );
    // Q8_0: this crate's blocks against candle's, on the same weights, per path.
    let q = q8_0::Q8_0Matrix::quantize(&w, n, k);
    let cq = candle_core::quantized::QMatMul::from_qtensor(
        candle_core::quantized::QTensor::quantize(&wt, candle_core::quantized::GgmlDType::Q8_0)
            .unwrap(),
    )
    .unwrap();
    let mut line = format!("  q8_0 gemv {n}x{k} ({} MB):", q.bytes() / 1_000_000);
    for path in Isa::available().into_iter().filter(|i| *i != Isa::Portable) {
        let ts: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                q.matmul_t(path, &x, 1, &mut y);
                t.elapsed().as_secs_f64()
            })
            .collect();
        line += &format!(" {} {:.1} GB/s;", path.name(), gbs(q.bytes(), median(&ts)));
    }
    let ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(candle_core::Module::forward(&cq, &xt).unwrap());
            t.elapsed().as_secs_f64()
        })
        .collect();
    println!("{line} candle {:.1} GB/s", gbs(q.bytes(), median(&ts)));
    // Small products as a decoding step meets them: 1024x1024 matrices, 100 distinct ones in
    // turn (400 MB, so none is cached), one join each.
    {
        let (rows, k) = (1024usize, 1024usize);
        let count = 100;
        let mats: Vec<f32> = (0..rows * k * count)
            .map(|i| (i % 89) as f32 * 1e-3)
            .collect();
        let mut ts = Vec::new();
        let mut y = vec![0f32; rows];
        for _ in 0..reps {
            let t = Instant::now();
            for c in 0..count {
                gemv::gemv(isa, &mats[c * rows * k..(c + 1) * rows * k], &x, &mut y);
            }
            ts.push(t.elapsed().as_secs_f64());
        }
        let pool_ts: Vec<f64> = (0..reps)
            .map(|_| {
                rayon::scope(|_| {
                    let t = Instant::now();
                    for c in 0..count {
                        gemv::gemv(isa, &mats[c * rows * k..(c + 1) * rows * k], &x, &mut y);
                    }
                    t.elapsed().as_secs_f64()
                })
            })
            .collect();
        println!(
            "  gemv 100 x (1024x1024) f32: {:.1} GB/s from the main thread, {:.1} GB/s on a pool thread",
            (rows * k * count * 4) as f64 / median(&ts) / 1e9,
            (rows * k * count * 4) as f64 / median(&pool_ts) / 1e9
        );
    }
    let simd: Vec<Isa> = Isa::available()
        .into_iter()
        .filter(|i| *i != Isa::Portable)
        .collect();
    let peaks: Vec<(Isa, f64)> = simd.iter().map(|&i| (i, fma_peak(i))).collect();
    for (i, peak) in &peaks {
        println!(
            "  {} peak {}: {peak:.0} GFLOP/s ({} threads, registers only)",
            if *i == Isa::Amx { "bf16 tile" } else { "FMA" },
            i.name(),
            rayon::current_num_threads()
        );
    }
    for (m, n, k) in [
        (64usize, 5632usize, 1024usize),
        (64, 1024, 2816),
        (64, 1536, 1024),
        (7, 1536, 1024),
        (512, 5632, 1024),
    ] {
        let w = &w[..n * k];
        let wb = &wb[..n * k];
        let xs: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 * 0.1).collect();
        let mut out = vec![0f32; m * n];
        let wt = candle_core::Tensor::from_slice(w, (n, k), &dev).unwrap();
        let xt = candle_core::Tensor::from_slice(&xs, (m, k), &dev).unwrap();
        let gf = |t: f64| (2 * m * n * k) as f64 / t / 1e9;
        let mut line = format!("  gemm {m}x{k} @ {n}x{k}^T:");
        // Every path alternates with the others in each repeat, so all see the same machine.
        let mut times = vec![(Vec::new(), Vec::new()); peaks.len()];
        let mut candle_times = Vec::new();
        for _ in 0..reps {
            for (j, (i, _)) in peaks.iter().enumerate() {
                // With AMX, float32 weights take the AVX-512 path: only bf16 is timed.
                if *i != Isa::Amx {
                    let t = Instant::now();
                    gemm::matmul_t(*i, &xs, m, w, n, None, &mut out);
                    times[j].0.push(t.elapsed().as_secs_f64());
                }
                let t = Instant::now();
                gemm::matmul_t(*i, &xs, m, wb, n, None, &mut out);
                times[j].1.push(t.elapsed().as_secs_f64());
            }
            let t = Instant::now();
            std::hint::black_box(xt.matmul(&wt.t().unwrap()).unwrap());
            candle_times.push(t.elapsed().as_secs_f64());
        }
        for ((i, peak), (a, b)) in peaks.iter().zip(&times) {
            if *i == Isa::Amx {
                let fb = gf(median(b));
                line += &format!(" amx bf16 {fb:.0} ({:.2} of tile peak);", fb / peak);
                continue;
            }
            let (fa, fb) = (gf(median(a)), gf(median(b)));
            line += &format!(
                " {} f32 {fa:.0} ({:.2} of peak), bf16 {fb:.0} ({:.2});",
                i.name(),
                fa / peak,
                fb / peak
            );
        }
        println!("{line} candle f32 {:.0} GFLOP/s", gf(median(&candle_times)));
    }
}

/// The multiply-add throughput of `isa` on every thread: independent multiply-adds on registers
/// only, the ceiling of any product kernel (GFLOP/s, two per multiply-add; best of three). For
/// AMX, the tile unit's bf16 products (what bf16-weight products run on); FMAs otherwise.
fn fma_peak(isa: Isa) -> f64 {
    const ITERS: usize = 20_000_000;
    let iters = if isa == Isa::Amx { ITERS / 100 } else { ITERS };
    let run = || -> f64 {
        let threads = rayon::current_num_threads();
        let t = Instant::now();
        let lanes: usize = (0..threads)
            .into_par_iter()
            .map(|_| match isa {
                #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
                // SAFETY: `isa` comes from `Isa::available`, so the CPU has it and the process
                // may use the tiles.
                Isa::Amx => unsafe { tile_loop_amx(iters) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Isa::Avx512 => unsafe { fma_loop_avx512(iters) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Isa::Avx2Fma => unsafe { fma_loop_avx2(iters) },
                _ => 0,
            })
            .sum();
        (lanes * iters * 2) as f64 / t.elapsed().as_secs_f64() / 1e9
    };
    (0..3).map(|_| run()).fold(0.0, f64::max)
}

/// `iters` steps of 4 independent AMX bf16 tile products (16 x 16 x 32 each, on zeroed tiles);
/// returns the multiply-adds per step.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
unsafe fn tile_loop_amx(iters: usize) -> usize {
    use std::arch::asm;
    #[repr(C, align(64))]
    struct Config([u8; 64]);
    let mut config = Config([0; 64]);
    config.0[0] = 1;
    for tile in 0..8 {
        config.0[16 + 2 * tile] = 64;
        config.0[48 + tile] = 16;
    }
    // SAFETY: AMX present and permitted (the caller's contract); palette-1 tiles of 16 x 64 B.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack));
        asm!(
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            options(nostack)
        );
        for _ in 0..iters {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem),
            );
        }
        asm!("tilerelease", options(nostack));
    }
    4 * 16 * 16 * 32
}

/// `iters` steps of 12 independent 8-lane FMAs; returns the lanes per step (96).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: usize) -> usize {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(1.0); 12];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    std::hint::black_box(acc);
    12 * 8
}

/// `iters` steps of 24 independent 16-lane FMAs; returns the lanes per step (384).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn fma_loop_avx512(iters: usize) -> usize {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(1.0); 24];
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    std::hint::black_box(acc);
    24 * 16
}

/// The two bench shapes, as `config.json` objects.
fn bench_configs() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "llama",
            serde_json::json!({
                "model_type": "llama", "architectures": ["LlamaForCausalLM"],
                "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816,
                "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4,
                "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "tie_word_embeddings": false, "initializer_range": 0.02,
                "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"
            }),
        ),
        (
            "qwen2_moe",
            serde_json::json!({
                "model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"],
                "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816,
                "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 16,
                "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "tie_word_embeddings": false, "initializer_range": 0.02,
                "use_sliding_window": false, "sliding_window": 2048, "max_window_layers": 8,
                "decoder_sparse_step": 1, "mlp_only_layers": [], "moe_intermediate_size": 512,
                "shared_expert_intermediate_size": 2048, "num_experts_per_tok": 4,
                "num_experts": 16, "norm_topk_prob": false, "qkv_bias": true,
                "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"
            }),
        ),
        (
            // Qwen3-30B-A3B's structure at the bench size: q/k norms, head_dim 128 wider than
            // hidden / heads, GQA 4:1, no shared expert, normalised top-k.
            "qwen3_moe",
            serde_json::json!({
                "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"],
                "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816,
                "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4,
                "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 2048,
                "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": false,
                "initializer_range": 0.02, "attention_bias": false, "use_sliding_window": false,
                "sliding_window": null, "max_window_layers": 8, "decoder_sparse_step": 1,
                "mlp_only_layers": [], "moe_intermediate_size": 512, "num_experts_per_tok": 4,
                "num_experts": 16, "norm_topk_prob": true,
                "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"
            }),
        ),
    ]
}

fn get(c: &serde_json::Value, key: &str) -> usize {
    c[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config key {key}")) as usize
}

/// Bytes of weights one decoding step must read, float32: every layer's projections, biases
/// and norms (for MoE layers: the router, the shared expert and its gate, and only the
/// `top_k` chosen experts), the final norm, the output head, and one row of the embedding.
fn bytes_per_token(c: &serde_json::Value, elem: usize) -> usize {
    let (h, v, layers) = (
        get(c, "hidden_size"),
        get(c, "vocab_size"),
        get(c, "num_hidden_layers"),
    );
    let (nh, nkv) = (get(c, "num_attention_heads"), get(c, "num_key_value_heads"));
    let d = c["head_dim"].as_u64().map_or(h / nh, |d| d as usize);
    let qkv_bias = c["qkv_bias"].as_bool().unwrap_or(false);
    let qk_norms = if c["model_type"] == "qwen3_moe" {
        2 * d
    } else {
        0
    };
    let attn = h * nh * d
        + 2 * h * nkv * d
        + nh * d * h
        + if qkv_bias { (nh + 2 * nkv) * d } else { 0 }
        + qk_norms;
    let norms = 2 * h;
    let ff = if c.get("num_experts").is_some() {
        let (e, k, i) = (
            get(c, "num_experts"),
            get(c, "num_experts_per_tok"),
            get(c, "moe_intermediate_size"),
        );
        // The shared expert and its gate, where there is one.
        let shared = c["shared_expert_intermediate_size"]
            .as_u64()
            .map_or(0, |s| 3 * s as usize * h + h);
        e * h + k * 3 * i * h + shared
    } else {
        3 * get(c, "intermediate_size") * h
    };
    (layers * (attn + norms + ff) + h + v * h + h) * elem
}

/// Writes the bench checkpoint `name` under `root` (seeded `from_config` + `save_pretrained`)
/// unless it is there.
fn ensure_checkpoint(
    root: &std::path::Path,
    name: &str,
    config: &serde_json::Value,
) -> std::path::PathBuf {
    let dir = root.join(name);
    let bf16_dir = root.join(format!("{name}-bf16"));
    if !dir.join("config.json").exists() || !bf16_dir.join("config.json").exists() {
        println!("writing {} and {}", dir.display(), bf16_dir.display());
        let model =
            AutoModelForCausalLM::from_config(config, &LoadOptions::default().with_seed(42))
                .expect("from_config");
        model
            .save_pretrained(&dir, &SaveOptions::default())
            .expect("save_pretrained");
        let bf16_options = SaveOptions {
            dtype: Some(DType::BF16),
            ..SaveOptions::default()
        };
        model
            .save_pretrained(&bf16_dir, &bf16_options)
            .expect("save_pretrained bf16");
    }
    dir
}

/// bf16 checkpoints: weights kept in bf16 (the default) against upcast to float32 at load,
/// alternately, same prompt.
fn bf16_section(root: &std::path::Path, reps: usize, prompt_len: usize, decode: usize) {
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|i| (i * 7919 % 31000 + 100) as u32)
        .collect();
    println!();
    println!("| bf16 checkpoint | weights | load s | prefill tok/s | decode tok/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, _) in bench_configs() {
        let dir = root.join(format!("{name}-bf16"));
        let mut results = Vec::new();
        for upcast in [false, true] {
            let t = Instant::now();
            let model = AutoModelForCausalLM::from_pretrained(
                &dir,
                &LoadOptions::default().with_upcast_weights(upcast),
            )
            .expect("load bf16");
            results.push((
                upcast,
                t.elapsed().as_secs_f64(),
                model,
                Vec::new(),
                Vec::new(),
            ));
        }
        for _ in 0..reps {
            for (_, _, model, p, d) in results.iter_mut() {
                let o = run_ours(model, &prompt, decode);
                p.push(prompt_len as f64 / o.prefill);
                d.push(decode as f64 / o.decode);
            }
        }
        for (upcast, load, _, p, d) in &results {
            let kept = if *upcast {
                "upcast to f32 at load"
            } else {
                "kept in bf16 (default)"
            };
            println!(
                "| {name} | {kept} | {load:.2} | {:.0} ±{:.0} | {:.1} ±{:.1} |",
                median(p),
                spread(p),
                median(d),
                spread(d)
            );
        }
    }
}

/// Seconds for the prefill and for the decoding steps (after the first token).
struct Timing {
    prefill: f64,
    decode: f64,
    tokens: Vec<u32>,
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Before each timed run: lets the threads of whatever ran before (the bandwidth passes, the
/// other program's pools) finish spinning and go to sleep, so neither program is timed while
/// the other's idle threads still compete for the two cores.
fn quiesce() {
    std::thread::sleep(std::time::Duration::from_millis(300));
}

fn run_ours(model: &CausalLM, prompt: &[u32], decode: usize) -> Timing {
    quiesce();
    let start = Instant::now();
    let mut first = None;
    let mut last = start;
    let out = model
        .generate_with(
            &[prompt.to_vec()],
            &GenerationConfig {
                ignore_eos: true,
                ..GenerationConfig::greedy(decode + 1)
            },
            |_, _| {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
            },
        )
        .expect("generate");
    let first = first.expect("a token");
    Timing {
        prefill: (first - start).as_secs_f64(),
        decode: (last - first).as_secs_f64(),
        tokens: out.new_tokens[0].clone(),
    }
}

enum Theirs {
    Llama(
        candle_transformers::models::llama::Llama,
        candle_transformers::models::llama::Config,
    ),
    Moe(candle_transformers::models::qwen2_moe::Model),
    Qwen3Moe(candle_transformers::models::qwen3_moe::ModelForCausalLM),
}

fn load_theirs(dir: &std::path::Path, c: &serde_json::Value) -> Theirs {
    use candle_transformers::models::{llama, qwen2_moe, qwen3_moe};
    let dev = Device::Cpu;
    let files = vec![dir.join("model.safetensors")];
    // SAFETY: the files are not modified while mapped (the harness wrote them and only reads).
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &dev) }.expect("mmap");
    let f = |k: &str| c[k].as_f64().expect(k);
    if c["model_type"] == "llama" {
        let cfg = llama::Config {
            hidden_size: get(c, "hidden_size"),
            intermediate_size: get(c, "intermediate_size"),
            vocab_size: get(c, "vocab_size"),
            num_hidden_layers: get(c, "num_hidden_layers"),
            num_attention_heads: get(c, "num_attention_heads"),
            num_key_value_heads: get(c, "num_key_value_heads"),
            use_flash_attn: false,
            rms_norm_eps: f("rms_norm_eps"),
            rope_theta: f("rope_theta") as f32,
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling: None,
            max_position_embeddings: get(c, "max_position_embeddings"),
            tie_word_embeddings: false,
        };
        Theirs::Llama(
            llama::Llama::load(vb, &cfg).expect("candle-transformers llama"),
            cfg,
        )
    } else if c["model_type"] == "qwen3_moe" {
        let cfg = qwen3_moe::Config {
            vocab_size: get(c, "vocab_size"),
            hidden_size: get(c, "hidden_size"),
            intermediate_size: get(c, "intermediate_size"),
            num_hidden_layers: get(c, "num_hidden_layers"),
            num_attention_heads: get(c, "num_attention_heads"),
            head_dim: get(c, "head_dim"),
            attention_bias: false,
            num_key_value_heads: get(c, "num_key_value_heads"),
            max_position_embeddings: get(c, "max_position_embeddings"),
            sliding_window: None,
            max_window_layers: get(c, "max_window_layers"),
            tie_word_embeddings: false,
            rope_theta: f("rope_theta"),
            rms_norm_eps: f("rms_norm_eps"),
            use_sliding_window: false,
            hidden_act: candle_nn::Activation::Silu,
            decoder_sparse_step: get(c, "decoder_sparse_step"),
            moe_intermediate_size: get(c, "moe_intermediate_size"),
            num_experts_per_tok: get(c, "num_experts_per_tok"),
            num_experts: get(c, "num_experts"),
            norm_topk_prob: true,
        };
        Theirs::Qwen3Moe(
            qwen3_moe::ModelForCausalLM::new(&cfg, vb).expect("candle-transformers qwen3_moe"),
        )
    } else {
        let cfg = qwen2_moe::Config {
            vocab_size: get(c, "vocab_size"),
            hidden_size: get(c, "hidden_size"),
            intermediate_size: get(c, "intermediate_size"),
            num_hidden_layers: get(c, "num_hidden_layers"),
            num_attention_heads: get(c, "num_attention_heads"),
            num_key_value_heads: get(c, "num_key_value_heads"),
            max_position_embeddings: get(c, "max_position_embeddings"),
            sliding_window: get(c, "sliding_window"),
            max_window_layers: get(c, "max_window_layers"),
            tie_word_embeddings: false,
            rope_theta: f("rope_theta"),
            rms_norm_eps: f("rms_norm_eps"),
            use_sliding_window: false,
            hidden_act: candle_nn::Activation::Silu,
            decoder_sparse_step: get(c, "decoder_sparse_step"),
            moe_intermediate_size: get(c, "moe_intermediate_size"),
            shared_expert_intermediate_size: get(c, "shared_expert_intermediate_size"),
            num_experts_per_tok: get(c, "num_experts_per_tok"),
            num_experts: get(c, "num_experts"),
            norm_topk_prob: false,
        };
        Theirs::Moe(qwen2_moe::Model::new(&cfg, vb).expect("candle-transformers qwen2_moe"))
    }
}

fn run_theirs(model: &mut Theirs, prompt: &[u32], decode: usize) -> Timing {
    let dev = Device::Cpu;
    let mut tokens = Vec::new();
    let mut cache = match model {
        Theirs::Llama(_, cfg) => Some(
            candle_transformers::models::llama::Cache::new(true, DType::F32, cfg, &dev)
                .expect("cache"),
        ),
        Theirs::Moe(m) => {
            m.clear_kv_cache();
            None
        }
        Theirs::Qwen3Moe(m) => {
            m.clear_kv_cache();
            None
        }
    };
    let mut step = |ids: &[u32], pos: usize| -> u32 {
        let input = Tensor::new(ids, &dev).unwrap().unsqueeze(0).unwrap();
        let logits = match model {
            Theirs::Llama(m, _) => m.forward(&input, pos, cache.as_mut().unwrap()).unwrap(),
            Theirs::Moe(m) => m.forward(&input, pos).unwrap(),
            Theirs::Qwen3Moe(m) => m.forward(&input, pos).unwrap(),
        };
        let v: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        argmax(&v)
    };
    quiesce();
    let start = Instant::now();
    let mut next = step(prompt, 0);
    tokens.push(next);
    let first = Instant::now();
    for i in 0..decode {
        next = step(&[next], prompt.len() + i);
        tokens.push(next);
    }
    let end = Instant::now();
    Timing {
        prefill: (first - start).as_secs_f64(),
        decode: (end - first).as_secs_f64(),
        tokens,
    }
}

/// transformers (PyTorch eager, float32, 2 threads) on `dir` through
/// `bench/scripts/torch_bench.py`: prefill and decode tok/s per repeat, or `None` with a note
/// when no `python3` with torch and transformers is found (or the script fails).
fn torch_side(
    dir: &std::path::Path,
    prompt: &[u32],
    decode: usize,
    reps: usize,
) -> Option<(Vec<f64>, Vec<f64>)> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/torch_bench.py");
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    quiesce();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(dir)
        .args(["--prompt", &ids.join(",")])
        .args(["--decode", &decode.to_string()])
        .args(["--repeats", &reps.to_string()])
        .args(["--threads", &rayon::current_num_threads().to_string()])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().last().unwrap_or("");
            println!("  note: PyTorch side skipped ({last})");
            return None;
        }
        Err(e) => {
            println!("  note: PyTorch side skipped (python3: {e})");
            return None;
        }
    };
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.lines().last()?).ok()?;
    let floats = |key: &str| -> Vec<f64> {
        v[key]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default()
    };
    let (prefill, decode) = (floats("prefill_tok_s"), floats("decode_tok_s"));
    println!(
        "  PyTorch eager: prefill {:.0} decode {:.1} tok/s (medians of {reps})",
        median(&prefill),
        median(&decode)
    );
    Some((prefill, decode))
}

fn models(
    root: &std::path::Path,
    reps: usize,
    prompt_len: usize,
    decode: usize,
    buf: &[f32],
    profile: bool,
) {
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|i| (i * 7919 % 31000 + 100) as u32)
        .collect();
    let mut rows = Vec::new();
    let mut torch_rows = Vec::new();
    let only_model = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "--model")
        .map(|w| w[1].clone());
    for (name, config) in bench_configs() {
        if only_model.as_deref().is_some_and(|m| m != name) {
            continue;
        }
        let dir = ensure_checkpoint(root, name, &config);
        let ours = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default())
            .expect("load ours");
        if profile {
            // Ours only, for a profiler: no candle-transformers, no bandwidth passes.
            for _ in 0..reps {
                let o = run_ours(&ours, &prompt, decode);
                println!(
                    "  {name}: prefill {:.0} decode {:.1} tok/s",
                    prompt_len as f64 / o.prefill,
                    decode as f64 / o.decode
                );
            }
            continue;
        }
        let mut theirs = load_theirs(&dir, &config);
        let (mut op, mut od, mut tp, mut td, mut bw) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut best, mut fraction) = (0f64, vec![]);
        let bytes = bytes_per_token(&config, 4);
        // One warm-up of each (page faults, thread pool start), then alternate.
        let _ = run_ours(&ours, &prompt, 4);
        let _ = run_theirs(&mut theirs, &prompt, 4);
        for rep in 0..reps {
            // The bandwidth of this repeat: the median of 5 read passes just before ours and 5
            // just after (the machine's bandwidth drifts; this brackets our run in time).
            let mut passes = bandwidth_passes(buf, 5);
            let o = run_ours(&ours, &prompt, decode);
            passes.extend(bandwidth_passes(buf, 5));
            best = passes.iter().cloned().fold(best, f64::max);
            bw.push(median(&passes));
            let t = run_theirs(&mut theirs, &prompt, decode);
            if rep == 0 && o.tokens != t.tokens {
                println!(
                    "  note: {name}: greedy tokens differ between the two (ours {:?}.., theirs {:?}..)",
                    &o.tokens[..4.min(o.tokens.len())],
                    &t.tokens[..4.min(t.tokens.len())]
                );
            }
            op.push(prompt_len as f64 / o.prefill);
            od.push(decode as f64 / o.decode);
            tp.push(prompt_len as f64 / t.prefill);
            td.push(decode as f64 / t.decode);
            fraction.push(od[rep] / (bw[rep] * 1e9 / bytes as f64));
            println!(
                "  {name} rep {rep}: bandwidth {:.1} GB/s | ours prefill {:.0} decode {:.1} tok/s | candle-transformers prefill {:.0} decode {:.1} tok/s",
                bw[rep], op[rep], od[rep], tp[rep], td[rep]
            );
        }
        if let Some(py) = torch_side(&dir, &prompt, decode, reps) {
            torch_rows.push((name, median(&op), median(&py.0), median(&od), median(&py.1)));
        }
        rows.push((
            name,
            bytes,
            median(&bw),
            best,
            median(&fraction),
            median(&op),
            median(&od),
            median(&tp),
            median(&td),
            spread(&op),
            spread(&od),
            spread(&tp),
            spread(&td),
        ));
    }
    println!();
    println!(
        "| model | bytes/token | bandwidth GB/s (best pass) | limit tok/s (at best) | ours decode | candle-tr. decode | decode ratio | fraction of limit (at best) | ours prefill | candle-tr. prefill | prefill ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, bytes, bw, best, fraction, op, od, tp, td, sop, sod, stp, std) in rows {
        let limit = bw * 1e9 / bytes as f64;
        let limit_best = best * 1e9 / bytes as f64;
        println!(
            "| {name} | {:.1} MB | {bw:.1} ({best:.1}) | {limit:.1} ({limit_best:.1}) | {od:.1} ±{sod:.1} | {td:.1} ±{std:.1} | {:.2}x | {fraction:.2} ({:.2}) | {op:.0} ±{sop:.0} | {tp:.0} ±{stp:.0} | {:.2}x |",
            bytes as f64 / 1e6,
            od / td,
            od / limit_best,
            op / tp
        );
    }
    if !torch_rows.is_empty() {
        println!();
        println!(
            "| model | ours prefill | PyTorch prefill | prefill ratio | ours decode | PyTorch decode | decode ratio |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for (name, op, pp, od, pd) in torch_rows {
            println!(
                "| {name} | {op:.0} | {pp:.0} | {:.2}x | {od:.1} | {pd:.1} | {:.2}x |",
                op / pp,
                od / pd
            );
        }
    }
}

/// Half the range (max - min) / 2 of the samples.
fn spread(v: &[f64]) -> f64 {
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    let min = v.iter().cloned().fold(f64::MAX, f64::min);
    (max - min) / 2.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let reps: usize = arg("--repeats").map_or(5, |v| v.parse().expect("--repeats N"));
    let only = arg("--only");
    // 1 GiB: far beyond every cache.
    let buf: Vec<f32> = vec![1.0; 1 << 28];
    if only.as_deref() == Some("gemv-experiment") {
        gemv_experiment(reps, &buf);
    }
    if only.as_deref().is_none_or(|o| o == "kernels") {
        kernels(reps, &buf);
    }
    if only.as_deref().is_none_or(|o| o == "models") {
        let prompt_len: usize =
            arg("--prompt-len").map_or(64, |v| v.parse().expect("--prompt-len N"));
        let decode: usize = arg("--decode").map_or(64, |v| v.parse().expect("--decode N"));
        let root = arg("--dir").map_or_else(
            || std::env::temp_dir().join("patchwork-bench"),
            std::path::PathBuf::from,
        );
        println!(
            "models: prompt {prompt_len} tokens, {decode} decoding steps, {reps} repeats, checkpoints in {}",
            root.display()
        );
        models(
            &root,
            reps,
            prompt_len,
            decode,
            &buf,
            args.iter().any(|a| a == "--profile-ours"),
        );
        if !args.iter().any(|a| a == "--profile-ours") {
            bf16_section(&root, reps, prompt_len, decode);
        }
    }
}

/// Experimental GEMV variants (rows R at a time, optional prefetch distance P in elements).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_variant<const R: usize, const P: usize>(w: &[f32], x: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = x.len();
    let rows = y.len();
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    let k16 = k / 16 * 16;
    let mut r = 0;
    while r + R <= rows {
        unsafe {
            let p: [*const f32; R] = std::array::from_fn(|i| wp.add((r + i) * k));
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let mut i = 0;
            while i < k16 {
                let x0 = _mm256_loadu_ps(xp.add(i));
                let x1 = _mm256_loadu_ps(xp.add(i + 8));
                if P > 0 {
                    for q in p {
                        _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(i + P) as *const i8);
                    }
                }
                for j in 0..R {
                    acc[j][0] = _mm256_fmadd_ps(_mm256_loadu_ps(p[j].add(i)), x0, acc[j][0]);
                    acc[j][1] = _mm256_fmadd_ps(_mm256_loadu_ps(p[j].add(i + 8)), x1, acc[j][1]);
                }
                i += 16;
            }
            for (j, a) in acc.iter().enumerate() {
                let v = _mm256_add_ps(a[0], a[1]);
                let mut o = [0f32; 8];
                _mm256_storeu_ps(o.as_mut_ptr(), v);
                *y.get_unchecked_mut(r + j) = o.iter().sum();
            }
        }
        r += R;
    }
}

fn gemv_experiment(reps: usize, buf: &[f32]) {
    let (n, k) = (32000usize, 1024usize);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
        .collect();
    let x: Vec<f32> = (0..k).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut y = vec![0f32; n];
    type V = unsafe fn(&[f32], &[f32], &mut [f32]);
    let variants: [(&str, V); 6] = [
        ("R4", gemv_variant::<4, 0>),
        ("R4 P256", gemv_variant::<4, 256>),
        ("R4 P512", gemv_variant::<4, 512>),
        ("R1", gemv_variant::<1, 0>),
        ("R2", gemv_variant::<2, 0>),
        ("R8", gemv_variant::<8, 0>),
    ];
    let mut times = vec![Vec::new(); variants.len()];
    let mut bw = Vec::new();
    for _ in 0..reps {
        bw.push(bandwidth(buf, 1));
        for (vi, (_, f)) in variants.iter().enumerate() {
            let t = Instant::now();
            rayon::scope(|_| {
                y.par_chunks_mut(n / 2)
                    .zip(w.par_chunks(n / 2 * k))
                    .for_each(|(yc, wc)| unsafe { f(wc, &x, yc) });
            });
            times[vi].push(t.elapsed().as_secs_f64());
        }
    }
    println!("  gemv variants (stream {:.1} GB/s):", median(&bw));
    for (vi, (name, _)) in variants.iter().enumerate() {
        println!(
            "    {name}: {:.1} GB/s",
            (n * k * 4) as f64 / median(&times[vi]) / 1e9
        );
    }
}
