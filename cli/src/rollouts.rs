//! `patchwork rollouts MODEL --inputs ROLLOUTS.jsonl --out BATCH.safetensors [--padding
//! left|right] [--pad-token-id N]`.
//!
//! Reads rollouts as inference engines return them: JSON Lines (one object per line) or one
//! JSON array, each with the prompt's ids (`prompt_ids`, or vLLM's `prompt_token_ids`,
//! SGLang's `input_ids`), the completion's (`completion_ids`, or vLLM's `token_ids`, SGLang's
//! `output_ids`) and optionally the routing: `routed_experts` as nested arrays `[tokens][layers]
//! [top_k]` (vLLM) or SGLang's base64 string (top level, in `meta_info` or `sglext`, with
//! `routed_experts_dtype`), and `routed_experts_start_len`. Only MODEL's config is read (its
//! `config.json`, or a GGUF file's metadata): the layer layout, top-k, the vocabulary.
//!
//! Writes one padded batch, the tensors `forward` and `routing-report` read (one file serves as
//! both `--inputs` and `--forced-experts`), all i64: `input_ids` `[B, T]`, `attention_mask`
//! `[B, T]`, `labels` `[B, T]` (the token on completion positions, -100 on prompt and
//! padding), and for MoE models with routing `selected_experts.L` `[B*T, K]` per MoE layer `L`
//! (-1 where nothing was recorded: the last token, padding). `OUT` is written atomically and is
//! never the input or a file of the checkpoint. The alignment rules are those of
//! `patchwork_models::rollouts`.

use std::path::{Path, PathBuf};

use patch_checkpoint::files::{check_output, read_json};
use patchwork_hub::HubOptions;
use patchwork_models::LoadOptions;
use patchwork_models::family::decoder_config;
use patchwork_models::rollouts::{Padding, RolloutBatch, read_rollouts};

use crate::CliResult;

/// Arguments of `rollouts`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint folder, Hub id or GGUF file whose config describes the model (no weight is
    /// read).
    #[arg(value_name = "MODEL")]
    model: PathBuf,
    /// Branch, tag or commit hash of a Hub id.
    #[arg(long, default_value = "main")]
    revision: String,
    /// The GGUF file to read in the MODEL folder (transformers' gguf_file).
    #[arg(long, value_name = "NAME")]
    gguf_file: Option<String>,
    /// Rollouts: JSON Lines or a JSON array.
    #[arg(long, value_name = "ROLLOUTS")]
    inputs: PathBuf,
    /// Safetensors file to write (atomically).
    #[arg(long)]
    out: PathBuf,
    /// Which side padding fills (transformers' `padding_side`).
    #[arg(long, alias = "padding-side", value_enum, default_value_t)]
    padding: PaddingArg,
    /// The id padding holds (default: the config's pad_token_id, else its first eos token,
    /// else 0; padding is masked, so it never changes a result).
    #[arg(long, value_name = "N")]
    pad_token_id: Option<u32>,
}

/// `--padding`'s values.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
enum PaddingArg {
    /// Padding first.
    Left,
    /// Padding last.
    #[default]
    Right,
}

/// Runs `rollouts`.
pub fn run(args: Args) -> CliResult {
    let options = LoadOptions {
        hub: HubOptions::default().with_revision(&args.revision),
        gguf_file: args.gguf_file.clone(),
        ..LoadOptions::default()
    };
    let location = patchwork_models::model_location(&args.model, &options)?;
    // Nothing of the checkpoint, nor the input, is ever overwritten.
    let checkpoint_files: Vec<PathBuf> = if location.is_file() {
        vec![location.clone()]
    } else {
        std::fs::read_dir(&location)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    let mut protected: Vec<&Path> = vec![&args.inputs];
    protected.extend(checkpoint_files.iter().map(PathBuf::as_path));
    check_output(&args.out, &protected)?;
    let (json, source) = if location.is_file() {
        let gguf = patchwork_gguf::GgufCheckpoint::open(&location)?;
        (gguf.config().clone(), location.display().to_string())
    } else {
        let path = location.join("config.json");
        (read_json(&path)?, path.display().to_string())
    };
    let config = decoder_config(&json, &source)?;
    let padding = match args.padding {
        PaddingArg::Left => Padding::Left,
        PaddingArg::Right => Padding::Right,
    };
    let rollouts = read_rollouts(&args.inputs, &config)?;
    let batch = RolloutBatch::from_rollouts(&rollouts, &config, padding, args.pad_token_id)?;
    patch_checkpoint::write_safetensors(&args.out, &batch.to_tensors(), &protected)?;
    let labels = batch
        .labels
        .flatten_all()?
        .to_vec1::<i64>()?
        .iter()
        .filter(|&&l| l != patchwork_models::loss::IGNORE_INDEX)
        .count();
    let routed = rollouts
        .iter()
        .filter(|r| r.routed_experts.is_some())
        .count();
    println!(
        "{} rollouts -> [{}, {}], {} padding, {labels} labels; routing of {routed} rollouts on MoE layers {:?}",
        batch.batch_size(),
        batch.batch_size(),
        batch.seq_len(),
        match padding {
            Padding::Left => "left",
            Padding::Right => "right",
        },
        batch.forced_experts.keys().collect::<Vec<_>>()
    );
    Ok(())
}
