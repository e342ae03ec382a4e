//! `patchwork forward DIR --inputs IN.safetensors --out OUT.safetensors [--dtype f32|bf16|f16]
//! [--max-positions N] [--grads] [--forced-experts ROUTING.safetensors] [--adapter [NAME=]DIR]`.
//!
//! Reads `input_ids` (`[B, T]`, any integer dtype), and if present `attention_mask` (`[B, T]`,
//! 1 = token, 0 = padding) and `labels` (`[B, T]`, any integer dtype, -100 ignored). Writes:
//!
//! - `logits` (f32 `[B, T, V]`);
//! - for each MoE layer `L` (absolute layer index): `router_logits.L` (f32 `[B*T, E]`) and
//!   `selected_experts.L` (i64 `[B*T, K]`);
//! - with labels: `loss` (f32 `[]`, the shifted mean cross-entropy; for MoE models plus
//!   `router_aux_loss_coef * aux_loss`, router outputs being always returned) and, for MoE
//!   models, `aux_loss` (f32 `[]`);
//! - with `--grads` (needs labels): `grad.KEY` (f32, the checkpoint tensor's shape) for every
//!   tensor `KEY` of the checkpoint, the gradients of `loss`; with `--adapter DIR` instead, for
//!   every key of the active (last) adapter's `adapter_model.safetensors` (f32, that tensor's
//!   shape), the base frozen.
//!
//! `--forced-experts FILE` (also `--routed-experts`, vLLM's name) replays a routing:
//! `selected_experts.L` (`[B*T, K]`, any integer dtype, -1 = route freely) for MoE layer `L`,
//! exactly what this command and `rollouts` write; or vLLM's `routed_experts` (`[B*T, layers,
//! K]` or `[B, T, layers, K]`, see `routing_file.rs`).
//!
//! `--output-hidden-states` adds `hidden_states.I` (f32 `[B, T, H]`, `I = 0..=L`: 0 the
//! embedding output, `I` the output of layer `I - 1`, `L` the final norm's output);
//! `--output-attentions` adds `attentions.L` (f32 `[B, heads, T, kv_len]`, post-softmax).
//!
//! `OUT` is written atomically (a temporary beside it, renamed into place when complete) and
//! is refused when it is one of the inputs, a file of the checkpoint, a symbolic link or not a
//! regular file. Logits holding NaN or infinity are an error that says where they come from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use patch_checkpoint::files::check_output;
use patchwork_models::ForwardOptions;
use patchwork_models::decoder::Selection;

use crate::CliResult;
use crate::model_args::{ModelArgs, read_tensors};
use crate::routing_file::RoutingFile;
use patchwork_lora::LoraOptions;

/// Arguments of `forward`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Safetensors file with `input_ids`, and optionally `attention_mask` and `labels`.
    #[arg(long)]
    inputs: PathBuf,
    /// Safetensors file to write (atomically; never one of the inputs, a link or a
    /// non-regular file).
    #[arg(long)]
    out: PathBuf,
    /// Also write `grad.KEY`, the gradient of `loss` for every checkpoint tensor (needs
    /// `labels` in the inputs).
    #[arg(long)]
    grads: bool,
    /// Safetensors file of `selected_experts.L` to replay (what `forward` and `rollouts`
    /// write), or of vLLM's `routed_experts`.
    #[arg(long, value_name = "ROUTING", alias = "routed-experts")]
    forced_experts: Option<PathBuf>,
    /// Also write `hidden_states.I` for every layer boundary.
    #[arg(long)]
    output_hidden_states: bool,
    /// Also write `attentions.L`, every layer's attention probabilities.
    #[arg(long)]
    output_attentions: bool,
}

/// Runs `forward`.
pub fn run(args: Args) -> CliResult {
    let name = args.inputs.display().to_string();
    // The inputs, and every file of the checkpoint, are never overwritten: refused before any
    // work, and again when the written file is renamed into place.
    let checkpoint_files: Vec<PathBuf> = args.model.files()?;
    let mut protected: Vec<&Path> = vec![&args.inputs];
    protected.extend(args.forced_experts.as_deref());
    protected.extend(checkpoint_files.iter().map(PathBuf::as_path));
    check_output(&args.out, &protected)?;
    let inputs = read_tensors(&args.inputs)?;
    let input_ids = inputs
        .get("input_ids")
        .ok_or_else(|| format!("{name}: no tensor named input_ids"))?;
    let labels = inputs.get("labels").cloned();
    if args.grads && labels.is_none() {
        return Err(format!(
            "{name}: --grads needs a tensor named labels (the loss to differentiate)"
        )
        .into());
    }
    let routing = match &args.forced_experts {
        Some(path) => Some((path, RoutingFile::read(path)?)),
        None => None,
    };
    // With adapters, --grads differentiates the adapters (trainable, base frozen); without,
    // the checkpoint's tensors.
    let adapter_grads = args.grads && !args.model.adapters.is_empty();
    let lora = if adapter_grads {
        LoraOptions::default().trainable()
    } else {
        LoraOptions::default()
    };
    let (model, adapters) = args.model.load_with_adapters(
        |o| {
            if args.grads && !adapter_grads {
                o.trainable()
            } else {
                o
            }
        },
        &lora,
    )?;
    let forced_experts = match routing {
        Some((path, file)) => file.forced_experts(path, model.config())?,
        None => BTreeMap::new(),
    };
    let all = |on: bool| if on { Selection::All } else { Selection::None };
    let forward = ForwardOptions {
        output_router_logits: Some(true),
        forced_experts,
        labels,
        output_hidden_states: all(args.output_hidden_states),
        output_attentions: all(args.output_attentions),
        ..ForwardOptions::default()
    };
    let out = model.forward_with(input_ids, inputs.get("attention_mask"), None, &forward)?;
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    if let Some(logits) = &out.logits {
        let finite = logits
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|l| l.is_finite());
        if !finite {
            return Err(patchwork_models::Error::NonFinite {
                what: "the logits".into(),
                diagnosis: model.diagnose_non_finite(input_ids),
            }
            .into());
        }
        tensors.insert("logits".into(), logits.detach().to_dtype(DType::F32)?);
    }
    for record in &out.router_logits {
        let l = record.layer;
        tensors.insert(
            format!("router_logits.{l}"),
            record.router.logits.detach().to_dtype(DType::F32)?,
        );
        tensors.insert(
            format!("selected_experts.{l}"),
            record.router.indices.to_dtype(DType::I64)?,
        );
    }
    for (i, h) in &out.hidden_states {
        tensors.insert(
            format!("hidden_states.{i}"),
            h.detach().to_dtype(DType::F32)?,
        );
    }
    for (l, a) in &out.attentions {
        tensors.insert(format!("attentions.{l}"), a.detach().to_dtype(DType::F32)?);
    }
    if let Some(aux) = &out.aux_loss
        && out.loss.is_some()
    {
        tensors.insert("aux_loss".into(), aux.detach().to_dtype(DType::F32)?);
    }
    if let Some(loss) = &out.loss {
        tensors.insert("loss".into(), loss.detach().to_dtype(DType::F32)?);
        if args.grads {
            let grads = loss.backward()?;
            let gradients = match &adapters {
                Some(adapters) if adapter_grads => {
                    let active = adapters.active().ok_or("no adapter is active")?;
                    adapters.gradients(&active, &grads)?
                }
                _ => model.gradients(&grads)?,
            };
            for (key, g) in gradients {
                tensors.insert(format!("grad.{key}"), g);
            }
        }
    }
    if crate::parallel::is_root() {
        patch_checkpoint::write_safetensors(&args.out, &tensors, &protected)?;
    }
    Ok(())
}
