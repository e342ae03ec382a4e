//! The arguments every subcommand that runs a model shares: the model (a folder or a Hub id),
//! its revision, the compute dtype and device, the position limit, the quantization topology;
//! and the checked reading of input files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use patchwork_hub::HubOptions;
use patchwork_lora::{LoraAdapters, LoraOptions};
use patchwork_models::{AutoModelForCausalLM, CausalLM, LoadOptions};
use patchwork_quant::{Format, Topology};

use crate::device::parse_device;
use crate::dtype::DTypeArg;

/// The model to run and how.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Checkpoint folder, a GGUF file, or a Hugging Face Hub id (ORG/NAME) found in the Hub
    /// cache (HF_HUB_CACHE, HF_HOME) and downloaded when missing unless HF_HUB_OFFLINE=1; a
    /// folder that exists wins. A folder without config.json loads its one .gguf file.
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// The GGUF file to load from the MODEL folder (transformers' gguf_file).
    #[arg(long, value_name = "NAME")]
    pub gguf_file: Option<String>,
    /// Branch, tag or commit hash of a Hub id.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Compute dtype (`auto`: the config's torch_dtype).
    #[arg(long, value_enum, default_value_t)]
    pub dtype: DTypeArg,
    /// Device: cpu, cuda, cuda:N, metal or metal:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Positions a pass or a generation may reach (default: the config's
    /// max_position_embeddings); past it the rotary embedding extrapolates.
    #[arg(long, value_name = "N")]
    pub max_positions: Option<usize>,
    /// Quantize every projection, expert bank and the token embedding at load into FORMAT
    /// (q8_0, q6_k, q5_1, q5_k, q5_0, q4_1, q4_k, q4_0, q3_k, q2_k, f16, or none): the
    /// quantized replacements are added to the patches as path rules (`inspect` shows each
    /// path's format and every fallback). Rows that do not fit a format fall back as
    /// llama.cpp's quantizer does. CPU inference.
    #[arg(long, value_name = "FORMAT", value_parser = parse_default_format)]
    pub quantize: Option<DefaultFormat>,
    /// A rule of the quantization topology, `REGEX=FORMAT` (FORMAT a format or `none`),
    /// repeatable: the first rule whose regex matches a weight's module path
    /// (`model.layers.3.self_attn.q_proj`, `lm_head`, `...mlp.experts.down_proj`) decides its
    /// format, else --quantize's (float without it).
    #[arg(long = "quantize-rule", value_name = "REGEX=FORMAT")]
    pub quantize_rules: Vec<String>,
    /// Dequantize a GGUF file's quantized tensors to --dtype at load, as transformers does,
    /// instead of computing on their blocks as stored (the default, CPU).
    #[arg(long)]
    pub dequantize: bool,
    /// A LoRA adapter folder as PEFT saves it (adapter_config.json,
    /// adapter_model.safetensors), repeatable: each is named by its folder (or NAME), and the
    /// last one is active. It wraps the projections its config targets, over whatever they
    /// are (float, or quantized by --quantize: QLoRA's setting).
    #[arg(long = "adapter", value_name = "[NAME=]DIR")]
    pub adapters: Vec<String>,
    /// Split the model across the processes an MPI launcher started (`mpirun -n N patchwork
    /// ...`): `tp` (attention heads and MLP widths, q/k/v and gate/up by columns, o and down
    /// by rows), `ep` (each MoE layer's experts, tokens exchanged by all-to-all), or `tp+ep`.
    /// Rank 0 prints and writes; outputs are those of one process.
    #[arg(long, value_name = "PLAN", value_parser = crate::parallel::parse_plan)]
    pub parallel: Option<patchwork_parallel::ParallelPlan>,
}

/// The default format of `--quantize`: a format, or `None` (`none`: float unless a rule says).
#[derive(Clone, Copy, Debug)]
pub struct DefaultFormat(pub Option<Format>);

/// A format name, or `none`.
fn parse_default_format(s: &str) -> Result<DefaultFormat, String> {
    patchwork_quant::parse_format(s).map(DefaultFormat)
}

impl ModelArgs {
    /// How a Hub id is looked up.
    pub fn hub(&self) -> HubOptions {
        HubOptions::default().with_revision(&self.revision)
    }

    /// Where the model is: its GGUF file, or its local folder (the Hub id resolved,
    /// downloading if allowed).
    pub fn location(&self) -> Result<PathBuf, patchwork_models::Error> {
        let options = LoadOptions {
            hub: self.hub(),
            gguf_file: self.gguf_file.clone(),
            ..LoadOptions::default()
        };
        patchwork_models::model_location(&self.model, &options)
    }

    /// The files of the model, which commands never overwrite: the GGUF file, or every file
    /// of the folder.
    pub fn files(&self) -> Result<Vec<PathBuf>, patchwork_models::Error> {
        let location = self.location()?;
        if location.is_file() {
            return Ok(vec![location]);
        }
        Ok(std::fs::read_dir(&location)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default())
    }

    /// The load options these arguments ask for, with a progress bar on a terminal.
    pub fn options(&self) -> Result<LoadOptions, String> {
        let device = match &self.parallel {
            Some(_) => crate::parallel::rank_device(parse_device(&self.device)?)?,
            None => parse_device(&self.device)?,
        };
        let mut options = LoadOptions::default().with_device(device.clone());
        options = match self.dtype.dtype() {
            Some(dtype) => options.with_dtype(dtype),
            None => options.with_auto_dtype(),
        };
        options.hub = self.hub();
        options.gguf_file = self.gguf_file.clone();
        options = options.with_packed(!self.dequantize);
        if let Some(n) = self.max_positions {
            options = options.with_max_positions(n);
        }
        if let Some(topology) = self.topology()? {
            options = options.with_added_patches(topology.patches().map_err(|e| e.to_string())?);
        }
        if let Some(plan) = &self.parallel {
            let comm = crate::parallel::communicator(&device)?;
            options = options.with_added_patches(plan.patches(comm).map_err(|e| e.to_string())?);
        }
        if let Some(bar) = crate::progress::bar().filter(|_| crate::parallel::is_root()) {
            options = options.with_progress(bar);
        }
        Ok(options)
    }

    /// The quantization topology --quantize and --quantize-rule describe, if any.
    pub fn topology(&self) -> Result<Option<Topology>, String> {
        if self.quantize.is_none() && self.quantize_rules.is_empty() {
            return Ok(None);
        }
        let mut topology = Topology::new(self.quantize.and_then(|d| d.0));
        for rule in &self.quantize_rules {
            topology = topology
                .with_rule_str(rule)
                .map_err(|e| format!("--quantize-rule: {e}"))?;
        }
        Ok(Some(topology))
    }

    /// Loads the model with [`ModelArgs::options`] adjusted by `adjust`, with the
    /// `--adapter`s on it.
    pub fn load(
        &self,
        adjust: impl FnOnce(LoadOptions) -> LoadOptions,
    ) -> Result<CausalLM, Box<dyn std::error::Error>> {
        Ok(self.load_with_adapters(adjust, &LoraOptions::default())?.0)
    }

    /// Loads the model as [`ModelArgs::load`] does, returning the `--adapter`s read with
    /// `lora` (trainable, for gradients) when there are any.
    pub fn load_with_adapters(
        &self,
        adjust: impl FnOnce(LoadOptions) -> LoadOptions,
        lora: &LoraOptions,
    ) -> Result<(CausalLM, Option<LoraAdapters>), Box<dyn std::error::Error>> {
        let mut options = adjust(self.options()?);
        let adapters = if self.adapters.is_empty() {
            None
        } else {
            let lora = lora.clone().with_device(options.device.clone());
            let named = self.adapters.iter().map(|a| adapter_arg(a));
            let adapters = LoraAdapters::from_named(named, &lora)?;
            options = options.with_added_patches(adapters.patches()?);
            Some(adapters)
        };
        let model = AutoModelForCausalLM::from_pretrained(&self.model, &options)?;
        if let Some(adapters) = &adapters {
            adapters.verify()?;
        }
        Ok((model, adapters))
    }
}

/// `--adapter [NAME=]DIR`: a folder that exists as given is a folder (named by its last
/// component), else `NAME=DIR`.
pub fn adapter_arg(arg: &str) -> (String, PathBuf) {
    let folder_name = |dir: &Path| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "default".to_string())
    };
    let whole = PathBuf::from(arg);
    match arg.split_once('=') {
        Some((name, dir)) if !whole.exists() && !name.is_empty() => {
            (name.to_string(), PathBuf::from(dir))
        }
        _ => (folder_name(&whole), whole),
    }
}

/// Every tensor of the safetensors file `path`, read with the checkpoint reader's checks
/// (regular file, header validated, sizes checked).
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, patch_checkpoint::Error> {
    patch_checkpoint::read_safetensors(path, &Device::Cpu)
}
