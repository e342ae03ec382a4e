//! `patchwork inspect DIR`.
//!
//! Output (stdout), one `key: value` per line, then a blank line and the explain report:
//!
//! ```text
//! model_type: llama
//! architecture: LlamaForCausalLM
//! parameters: 102464
//! dtype: float32
//! compute_dtype: float32
//!
//! model_type llama (LlamaForCausalLM)
//! patch explain: ...
//! ```
//!
//! `dtype` is the dtype the checkpoint's tensors are stored in (comma-separated if several, in
//! transformers' names); `compute_dtype` is what the model runs in; `parameters` counts tied
//! embeddings once.

use std::path::PathBuf;

use patch_checkpoint::Checkpoint;
use patchwork_models::{AutoModelForCausalLM, LoadOptions};

use crate::CliResult;
use crate::dtype::torch_name;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint folder (config.json and safetensors weights).
    dir: PathBuf,
}

/// Runs `inspect`.
pub fn run(args: Args) -> CliResult {
    let model = AutoModelForCausalLM::from_pretrained(&args.dir, &LoadOptions::default())?;
    let mut stored: Vec<String> = Checkpoint::open(&args.dir)?
        .tensors()
        .into_iter()
        .map(|(_, dtype, _)| dtype.map_or_else(|| "unknown".to_string(), torch_name))
        .collect();
    stored.sort();
    stored.dedup();
    let stored = stored.join(",");
    println!("model_type: {}", model.family().model_type);
    println!("architecture: {}", model.family().architecture);
    println!("parameters: {}", model.num_parameters());
    println!("dtype: {stored}");
    println!("compute_dtype: {}", torch_name(model.dtype()));
    println!();
    print!("{}", model.explain());
    Ok(())
}
