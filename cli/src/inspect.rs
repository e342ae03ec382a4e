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
//! `dtype` is the checkpoint's stored dtype as its config names it (`torch_dtype` or `dtype`),
//! else the compute dtype; `parameters` counts tied embeddings once.

use std::path::PathBuf;

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
    let json = model.config_json();
    let stored = ["torch_dtype", "dtype"]
        .iter()
        .find_map(|k| json.get(*k).and_then(|v| v.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| torch_name(model.dtype()));
    println!("model_type: {}", model.family().model_type);
    println!("architecture: {}", model.family().architecture);
    println!("parameters: {}", model.num_parameters());
    println!("dtype: {stored}");
    println!("compute_dtype: {}", torch_name(model.dtype()));
    println!();
    print!("{}", model.explain());
    Ok(())
}
