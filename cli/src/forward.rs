//! `patchwork forward DIR --inputs IN.safetensors --out OUT.safetensors [--dtype f32|bf16|f16]`.
//!
//! Reads `input_ids` (`[B, T]`, i64 or u32) and, if present, `attention_mask` (`[B, T]`,
//! 1 = token, 0 = padding). Writes `logits` (f32 `[B, T, V]`) and, for each MoE layer `L`
//! (absolute layer index), `router_logits.L` (f32 `[B*T, E]`) and `selected_experts.L`
//! (i64 `[B*T, K]`).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use patchwork_models::{AutoModelForCausalLM, ForwardOptions, LoadOptions};

use crate::CliResult;
use crate::dtype::DTypeArg;

/// Arguments of `forward`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint folder.
    dir: PathBuf,
    /// Safetensors file with `input_ids` and optionally `attention_mask`.
    #[arg(long)]
    inputs: PathBuf,
    /// Safetensors file to write.
    #[arg(long)]
    out: PathBuf,
    /// Compute dtype.
    #[arg(long, value_enum, default_value_t)]
    dtype: DTypeArg,
}

/// Runs `forward`.
pub fn run(args: Args) -> CliResult {
    let inputs = candle_core::safetensors::load(&args.inputs, &Device::Cpu)
        .map_err(|e| format!("{}: {e}", args.inputs.display()))?;
    let input_ids = inputs
        .get("input_ids")
        .ok_or_else(|| format!("{}: no tensor named input_ids", args.inputs.display()))?;
    if !matches!(input_ids.dtype(), DType::I64 | DType::U32) {
        return Err(format!(
            "{}: input_ids must be i64 or u32, found {:?}",
            args.inputs.display(),
            input_ids.dtype()
        )
        .into());
    }
    let options = LoadOptions::default().with_dtype(args.dtype.into());
    let model = AutoModelForCausalLM::from_pretrained(&args.dir, &options)?;
    let forward = ForwardOptions {
        output_router_logits: true,
        ..ForwardOptions::default()
    };
    let out = model.forward_with(input_ids, inputs.get("attention_mask"), None, &forward)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    if let Some(logits) = out.logits {
        tensors.insert("logits".into(), logits.to_dtype(DType::F32)?);
    }
    for record in out.router_logits {
        let l = record.layer;
        tensors.insert(
            format!("router_logits.{l}"),
            record.router.logits.to_dtype(DType::F32)?,
        );
        tensors.insert(
            format!("selected_experts.{l}"),
            record.router.indices.to_dtype(DType::I64)?,
        );
    }
    candle_core::safetensors::save(&tensors, &args.out)
        .map_err(|e| format!("{}: {e}", args.out.display()))?;
    Ok(())
}
