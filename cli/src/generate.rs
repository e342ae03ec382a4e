//! `patchwork generate DIR --prompt-ids 5,6,7 --max-new-tokens N [--ignore-eos]
//! [--temperature T] [--top-k K] [--top-p P] [--seed S] [--dtype f32|bf16|f16]
//! [--max-positions N]`.
//!
//! Greedy unless a temperature is given (`--top-k`, `--top-p` and `--seed` need one). The last
//! line of stdout is the whole sequence, prompt then new ids, comma-separated; timings go to
//! stderr.

use std::time::Instant;

use patchwork_models::{AutoModelForCausalLM, GenerationConfig, Sampling};

use crate::CliResult;
use crate::model_args::ModelArgs;

/// Arguments of `generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    prompt_ids: Vec<u32>,
    /// Tokens to generate at most.
    #[arg(long)]
    max_new_tokens: usize,
    /// Do not stop at the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Sample with this temperature instead of decoding greedily.
    #[arg(long)]
    temperature: Option<f64>,
    /// Sample among the K most likely tokens only.
    #[arg(long, requires = "temperature")]
    top_k: Option<usize>,
    /// Sample among the most likely tokens whose probability reaches P.
    #[arg(long, requires = "temperature")]
    top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, requires = "temperature")]
    seed: Option<u64>,
}

/// Runs `generate`.
pub fn run(args: Args) -> CliResult {
    let start = Instant::now();
    let model = AutoModelForCausalLM::from_pretrained(&args.model.dir, &args.model.options())?;
    let loaded = start.elapsed();
    let sampling = match args.temperature {
        None => Sampling::Greedy,
        Some(temperature) => Sampling::Sample {
            temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed.unwrap_or(0),
        },
    };
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling,
        ignore_eos: args.ignore_eos,
        ..GenerationConfig::default()
    };
    let start = Instant::now();
    let out = model.generate(&[args.prompt_ids], &config)?;
    let elapsed = start.elapsed();
    let new = out.new_tokens[0].len();
    eprintln!(
        "loaded in {:.2}s; {new} new tokens in {:.2}s ({:.1} tokens/s)",
        loaded.as_secs_f64(),
        elapsed.as_secs_f64(),
        new as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    let line: Vec<String> = out.sequences[0].iter().map(u32::to_string).collect();
    println!("{}", line.join(","));
    Ok(())
}
