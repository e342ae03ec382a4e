//! Peak memory of loading a Qwen2-MoE-shaped checkpoint with the expert-stacking conversion.
//!
//! ```text
//! cargo run --release -p patch-checkpoint --example load_rss [-- DIR]
//! ```
//!
//! Writes (once) a float32 checkpoint of about 1.4 GB laid out as on the Hub (hidden 1024,
//! 8 layers, 16 experts stored one module per expert, moe_intermediate 512, shared expert
//! 2048, vocab 32000) to DIR (default: a folder in the system temp dir), then loads it in a
//! fresh process requesting every tensor as the Qwen2-MoE model does (experts stacked into
//! `gate_up_proj [E, 2I, H]` and `down_proj [E, H, I]`), and prints the peak resident set
//! (VmHWM) against the size of the loaded model.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use patch_checkpoint::{Checkpoint, Weights, mappings};
use safetensors::{Dtype, View};

const HIDDEN: usize = 1024;
const LAYERS: usize = 8;
const EXPERTS: usize = 16;
const MOE_INTER: usize = 512;
const SHARED: usize = 2048;
const VOCAB: usize = 32000;

/// Every tensor of the checkpoint, in the Hub layout.
fn hub_tensors() -> Vec<(String, Vec<usize>)> {
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".to_string(), vec![HIDDEN]),
        ("lm_head.weight".to_string(), vec![VOCAB, HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for n in ["q_proj", "k_proj", "v_proj"] {
            t.push((format!("{p}.self_attn.{n}.weight"), vec![HIDDEN, HIDDEN]));
            t.push((format!("{p}.self_attn.{n}.bias"), vec![HIDDEN]));
        }
        t.push((format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, HIDDEN]));
        t.push((format!("{p}.input_layernorm.weight"), vec![HIDDEN]));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]));
        t.push((format!("{p}.mlp.gate.weight"), vec![EXPERTS, HIDDEN]));
        for e in 0..EXPERTS {
            t.push((
                format!("{p}.mlp.experts.{e}.gate_proj.weight"),
                vec![MOE_INTER, HIDDEN],
            ));
            t.push((
                format!("{p}.mlp.experts.{e}.up_proj.weight"),
                vec![MOE_INTER, HIDDEN],
            ));
            t.push((
                format!("{p}.mlp.experts.{e}.down_proj.weight"),
                vec![HIDDEN, MOE_INTER],
            ));
        }
        t.push((
            format!("{p}.mlp.shared_expert.gate_proj.weight"),
            vec![SHARED, HIDDEN],
        ));
        t.push((
            format!("{p}.mlp.shared_expert.up_proj.weight"),
            vec![SHARED, HIDDEN],
        ));
        t.push((
            format!("{p}.mlp.shared_expert.down_proj.weight"),
            vec![HIDDEN, SHARED],
        ));
        t.push((
            format!("{p}.mlp.shared_expert_gate.weight"),
            vec![1, HIDDEN],
        ));
    }
    t
}

/// What the model asks for: (name, shape).
fn model_requests() -> Vec<(String, Vec<usize>)> {
    let mut t = Vec::new();
    for (name, shape) in hub_tensors() {
        if !name.contains(".experts.") {
            t.push((name, shape));
        }
    }
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}.mlp.experts");
        t.push((
            format!("{p}.gate_up_proj"),
            vec![EXPERTS, 2 * MOE_INTER, HIDDEN],
        ));
        t.push((format!("{p}.down_proj"), vec![EXPERTS, HIDDEN, MOE_INTER]));
    }
    t
}

/// A tensor whose bytes are generated when the writer asks for them.
struct Generated {
    shape: Vec<usize>,
    seed: u64,
}

impl View for Generated {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let n: usize = self.shape.iter().product();
        let mut x = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(n * 4);
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04;
            out.extend_from_slice(&v.to_le_bytes());
        }
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

fn generate(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let config = serde_json::json!({
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "num_experts": EXPERTS,
        "num_experts_per_tok": 4,
        "moe_intermediate_size": MOE_INTER,
        "shared_expert_intermediate_size": SHARED,
        "intermediate_size": 5632,
        "vocab_size": VOCAB,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "tie_word_embeddings": false,
        "torch_dtype": "float32"
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let tensors: Vec<(String, Generated)> = hub_tensors()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            (
                name,
                Generated {
                    shape,
                    seed: i as u64 + 1,
                },
            )
        })
        .collect();
    let tmp = dir.join("model.safetensors.partial");
    safetensors::serialize_to_file(tensors, None, &tmp)?;
    std::fs::rename(tmp, dir.join("model.safetensors"))?;
    Ok(())
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn load(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let before = status_kb("VmRSS:");
    let started = Instant::now();
    let ckpt = Checkpoint::open(dir)?;
    let source = Arc::new(ckpt.source(mappings::qwen2_moe())?);
    let weights = Weights::from_arc(source.clone(), DType::F32, &Device::Cpu);
    let mut model = Vec::new();
    for (name, shape) in model_requests() {
        model.push(weights.get(shape, &name)?);
    }
    weights.finish()?;
    let elapsed = started.elapsed();
    let model_bytes: usize = model
        .iter()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    let hwm = status_kb("VmHWM:");
    print!("{}", source.report());
    println!("load time          {:.2} s", elapsed.as_secs_f64());
    println!(
        "model size         {:.1} MB ({} tensors)",
        model_bytes as f64 / 1e6,
        model.len()
    );
    println!("RSS before load    {:.1} MB", before as f64 * 1024.0 / 1e6);
    println!("peak RSS (VmHWM)   {:.1} MB", hwm as f64 * 1024.0 / 1e6);
    println!(
        "peak / model size  {:.3}",
        hwm as f64 * 1024.0 / model_bytes as f64
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let dir = args.get(2).ok_or("--child needs a folder")?;
        return load(Path::new(dir));
    }
    let dir = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("patchwork-rss-qwen2-moe"));
    if !dir.join("model.safetensors").exists() {
        println!("writing the checkpoint to {} ...", dir.display());
        generate(&dir)?;
    }
    let file = std::fs::metadata(dir.join("model.safetensors"))?.len();
    println!(
        "checkpoint         {} ({:.1} MB)",
        dir.display(),
        file as f64 / 1e6
    );
    // Measure in a fresh process: the peak must not include writing the checkpoint.
    let status = Command::new(std::env::current_exe()?)
        .arg("--child")
        .arg(&dir)
        .status()?;
    if !status.success() {
        return Err("the load failed".into());
    }
    Ok(())
}
