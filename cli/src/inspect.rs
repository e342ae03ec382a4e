//! `patchwork inspect MODEL`.
//!
//! Output (stdout), one `key: value` per line, then a blank line, the explain report, a blank
//! line and the load report:
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
//!
//! load report: ...
//! ```
//!
//! `dtype` is the dtype the checkpoint's tensors are stored in (comma-separated if several, in
//! transformers' names); `compute_dtype` is what the model runs in; `parameters` counts tied
//! embeddings once.

use patch_checkpoint::Checkpoint;

use crate::CliResult;
use crate::dtype::torch_name;
use crate::model_args::ModelArgs;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
}

/// Runs `inspect`.
pub fn run(args: Args) -> CliResult {
    let location = args.model.location()?;
    let model = args.model.load(|o| o)?;
    let mut stored: Vec<String> = if location.is_file() {
        // A GGUF file: its tensors' ggml types (`Q4K`, `F32`).
        patchwork_gguf::GgufCheckpoint::open(&location)?
            .tensors()
            .into_iter()
            .map(|(_, ggml, _)| ggml)
            .collect()
    } else {
        Checkpoint::open(&location)?
            .tensors()
            .into_iter()
            .map(|(_, dtype, _)| dtype.map_or_else(|| "unknown".to_string(), torch_name))
            .collect()
    };
    stored.sort();
    stored.dedup();
    let stored = stored.join(",");
    crate::parallel::say!("model_type: {}", model.family().model_type);
    crate::parallel::say!("architecture: {}", model.family().architecture);
    crate::parallel::say!("parameters: {}", model.num_parameters());
    crate::parallel::say!("dtype: {stored}");
    crate::parallel::say!("compute_dtype: {}", torch_name(model.dtype()));
    crate::parallel::say!();
    if crate::parallel::is_root() {
        print!("{}", model.explain());
    }
    if let Some(report) = model.load_report() {
        crate::parallel::say!();
        crate::parallel::say!("{report}");
    }
    Ok(())
}
