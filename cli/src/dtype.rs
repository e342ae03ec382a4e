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
    /// The config's `torch_dtype` (float32 when it names none).
    Auto,
}

impl DTypeArg {
    /// The dtype, or `None` for `auto`.
    pub fn dtype(self) -> Option<DType> {
        match self {
            DTypeArg::F32 => Some(DType::F32),
            DTypeArg::Bf16 => Some(DType::BF16),
            DTypeArg::F16 => Some(DType::F16),
            DTypeArg::Auto => None,
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
