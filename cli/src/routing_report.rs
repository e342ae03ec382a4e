//! `patchwork routing-report MODEL --inputs IN.safetensors --forced-experts ROUTING.safetensors
//! --out REPORT.json`.
//!
//! Runs the model twice over `IN`'s `input_ids` (with `attention_mask` and `labels` when
//! present): routing freely (the trainer's own routing) and replaying `ROUTING` (the rollout's:
//! `selected_experts.L`, or vLLM's `routed_experts`; `rollouts` writes a file that serves as
//! both `IN` and `ROUTING`). Writes `REPORT.json` atomically, `patchwork_models::rollouts::
//! RoutingReport` serialised: `summary` (the figures in short), `layers` (per MoE layer: the
//! share of tokens whose top-k set the trainer picks identically, the mean overlap), `tokens`
//! (per token: the layers that differ), `labels` (per label: its log-probability free and
//! replayed, their difference, the KL(replayed || free) of the next-token distributions).
//! Prints a short summary on stdout. Without labels, every real token after a real token is
//! scored.

use std::path::{Path, PathBuf};

use patch_checkpoint::files::{check_output, write_atomically};
use patchwork_models::rollouts::routing_report;

use crate::CliResult;
use crate::model_args::{ModelArgs, read_tensors};
use crate::routing_file::RoutingFile;

/// Arguments of `routing-report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Safetensors file with `input_ids`, and optionally `attention_mask` and `labels`.
    #[arg(long)]
    inputs: PathBuf,
    /// The rollout's routing: `selected_experts.L` per MoE layer, or vLLM's `routed_experts`.
    #[arg(long, value_name = "ROUTING", alias = "routed-experts")]
    forced_experts: PathBuf,
    /// JSON file to write (atomically).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `routing-report`.
pub fn run(args: Args) -> CliResult {
    let checkpoint_files: Vec<PathBuf> = args.model.files()?;
    let mut protected: Vec<&Path> = vec![&args.inputs, &args.forced_experts];
    protected.extend(checkpoint_files.iter().map(PathBuf::as_path));
    check_output(&args.out, &protected)?;
    let name = args.inputs.display();
    let inputs = read_tensors(&args.inputs)?;
    let input_ids = inputs
        .get("input_ids")
        .ok_or_else(|| format!("{name}: no tensor named input_ids"))?;
    let routing = RoutingFile::read(&args.forced_experts)?;
    let model = args.model.load(|o| o)?;
    let forced = routing.forced_experts(&args.forced_experts, model.config())?;
    let report = routing_report(
        &model,
        input_ids,
        inputs.get("attention_mask"),
        inputs.get("labels"),
        &forced,
    )?;
    let json = serde_json::to_vec_pretty(&report)?;
    write_atomically(&args.out, &json, &protected)?;
    println!("{report}");
    Ok(())
}
