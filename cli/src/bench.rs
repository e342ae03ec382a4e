//! `patchwork bench DIR [--prompt-len N] [--decode N] [--repeats N] [--dtype f32|bf16|f16]
//! [--upcast-weights]`: load time, prefill and decode speed, peak memory.
//!
//! Each repeat runs one greedy generation of `--decode` tokens (end-of-sequence ignored) after a
//! prompt of `--prompt-len` deterministic token ids, timing the prompt pass up to the first
//! token (prefill) and the steps after it (decode). The last line of stdout is exactly
//! `prefill_tok_s=<x> decode_tok_s=<y>`, the medians over the repeats (other tools parse it).

use std::time::Instant;

use patchwork_models::GenerationConfig;

use crate::CliResult;
use crate::model_args::ModelArgs;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// Tokens decoded after the first one (each repeat generates `decode + 1`).
    #[arg(long, default_value_t = 64)]
    decode: usize,
    /// Repeats; the medians are reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Convert half-precision weights to the compute dtype at load instead of keeping them.
    #[arg(long)]
    upcast_weights: bool,
}

/// Runs `bench`.
pub fn run(args: Args) -> CliResult {
    if args.prompt_len == 0 || args.decode == 0 || args.repeats == 0 {
        return Err("--prompt-len, --decode and --repeats must be at least 1".into());
    }
    let start = Instant::now();
    let model = args
        .model
        .load(|o| o.with_upcast_weights(args.upcast_weights))?;
    let steps = args
        .decode
        .checked_add(1)
        .filter(|steps| {
            args.prompt_len
                .checked_add(*steps)
                .is_some_and(|n| n <= model.max_positions())
        })
        .ok_or_else(|| {
            format!(
                "--prompt-len {} and --decode {} reach past the {} positions the model allows (--max-positions raises it)",
                args.prompt_len,
                args.decode,
                model.max_positions()
            )
        })?;
    let load = start.elapsed().as_secs_f64();
    let vocab = model.config().vocab_size;
    crate::parallel::say!(
        "model_type: {}, parameters: {}, weights: {:?}",
        model.family().model_type,
        model.num_parameters(),
        model.config().weight_dtype.unwrap_or(model.dtype())
    );
    crate::parallel::say!("load: {load:.2} s");
    let prompt: Vec<u32> = (0..args.prompt_len)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    let config = GenerationConfig {
        ignore_eos: true,
        ..GenerationConfig::greedy(steps)
    };
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for rep in 0..args.repeats {
        let start = Instant::now();
        let mut first = None;
        let mut last = start;
        model.generate_with(std::slice::from_ref(&prompt), &config, |_, _| {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
        })?;
        let first = first.ok_or("no token generated")?;
        let p = args.prompt_len as f64 / (first - start).as_secs_f64().max(1e-9);
        let d = args.decode as f64 / (last - first).as_secs_f64().max(1e-9);
        crate::parallel::say!(
            "repeat {}: prefill {p:.1} tok/s, decode {d:.2} tok/s",
            rep + 1
        );
        prefill.push(p);
        decode.push(d);
    }
    match peak_rss_bytes() {
        Some(b) => crate::parallel::say!("peak_rss: {:.1} MiB", b as f64 / (1 << 20) as f64),
        None => crate::parallel::say!("peak_rss: unknown on this platform"),
    }
    crate::parallel::say!(
        "prefill_tok_s={:.2} decode_tok_s={:.2}",
        median(prefill),
        median(decode)
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The process's peak resident set (`VmHWM` of `/proc/self/status`), where Linux reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
