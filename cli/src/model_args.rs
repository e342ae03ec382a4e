//! The arguments every subcommand that runs a model shares: the checkpoint, the compute dtype
//! and the position limit; and the checked reading of its input files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use patchwork_models::LoadOptions;

use crate::dtype::DTypeArg;

/// The checkpoint to run and how.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Checkpoint folder (config.json and safetensors weights, single or sharded).
    pub dir: PathBuf,
    /// Compute dtype.
    #[arg(long, value_enum, default_value_t)]
    pub dtype: DTypeArg,
    /// Positions a pass or a generation may reach (default: the config's
    /// max_position_embeddings); past it the rotary embedding extrapolates.
    #[arg(long, value_name = "N")]
    pub max_positions: Option<usize>,
}

impl ModelArgs {
    /// The load options these arguments ask for.
    pub fn options(&self) -> LoadOptions {
        let options = LoadOptions::default().with_dtype(self.dtype.into());
        match self.max_positions {
            Some(n) => options.with_max_positions(n),
            None => options,
        }
    }
}

/// Every tensor of the safetensors file `path`, read with the checkpoint reader's checks
/// (regular file, header validated, sizes checked).
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, patch_checkpoint::Error> {
    patch_checkpoint::read_safetensors(path, &Device::Cpu)
}
