//! The `--dtype` option shared by the subcommands that run a model.

use candle_core::DType;

/// Compute dtype of the model.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum DTypeArg {
    /// float32 (default; exact on CPU).
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
}

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
            DTypeArg::F16 => DType::F16,
        }
    }
}

/// transformers' name of a dtype (`float32`), as `config.json` writes it.
pub fn torch_name(dtype: DType) -> String {
    match dtype {
        DType::F32 => "float32".into(),
        DType::BF16 => "bfloat16".into(),
        DType::F16 => "float16".into(),
        DType::F64 => "float64".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}
