//! The arguments every subcommand that runs a model shares: the model (a folder or a Hub id),
//! its revision, the compute dtype and device, the position limit, quantization; and the checked reading of
//! input files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use patchwork_hub::HubOptions;
use patchwork_models::{AutoModelForCausalLM, CausalLM, LoadOptions, Quantization};

use crate::device::parse_device;
use crate::dtype::DTypeArg;

/// The model to run and how.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Checkpoint folder, or a Hugging Face Hub id (ORG/NAME) found in the Hub cache
    /// (HF_HUB_CACHE, HF_HOME) and downloaded when missing unless HF_HUB_OFFLINE=1; a folder
    /// that exists wins.
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
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
    /// Quantize the attention, MLP and output-head weights at load (q8_0 or q4k): the
    /// quantized replacements are added to the patches (`inspect` shows them). CPU inference.
    #[arg(long, value_name = "FORMAT", value_parser = parse_quantization)]
    pub quantize: Option<Quantization>,
}

/// `q8_0` or `q4k` (also `q4_k`).
fn parse_quantization(s: &str) -> Result<Quantization, String> {
    Quantization::from_name(s).ok_or_else(|| {
        let known: Vec<&str> = Quantization::ALL.iter().map(|q| q.name()).collect();
        format!("unknown format {s:?} (known: {})", known.join(", "))
    })
}

impl ModelArgs {
    /// How a Hub id is looked up.
    pub fn hub(&self) -> HubOptions {
        HubOptions::default().with_revision(&self.revision)
    }

    /// The local folder of the model (the Hub id resolved, downloading if allowed).
    pub fn folder(&self) -> Result<PathBuf, patchwork_hub::Error> {
        patchwork_hub::resolve_model(&self.model, &self.hub())
    }

    /// The load options these arguments ask for, with a progress bar on a terminal.
    pub fn options(&self) -> Result<LoadOptions, String> {
        let mut options = LoadOptions::default().with_device(parse_device(&self.device)?);
        options = match self.dtype.dtype() {
            Some(dtype) => options.with_dtype(dtype),
            None => options.with_auto_dtype(),
        };
        options.hub = self.hub();
        if let Some(n) = self.max_positions {
            options = options.with_max_positions(n);
        }
        if let Some(q) = self.quantize {
            options = options.with_quantization(q);
        }
        if let Some(bar) = crate::progress::bar() {
            options = options.with_progress(bar);
        }
        Ok(options)
    }

    /// Loads the model with [`ModelArgs::options`] adjusted by `adjust`.
    pub fn load(
        &self,
        adjust: impl FnOnce(LoadOptions) -> LoadOptions,
    ) -> Result<CausalLM, Box<dyn std::error::Error>> {
        let options = adjust(self.options()?);
        Ok(AutoModelForCausalLM::from_pretrained(
            &self.model,
            &options,
        )?)
    }
}

/// Every tensor of the safetensors file `path`, read with the checkpoint reader's checks
/// (regular file, header validated, sizes checked).
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, patch_checkpoint::Error> {
    patch_checkpoint::read_safetensors(path, &Device::Cpu)
}
