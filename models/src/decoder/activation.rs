//! The activations of the gated MLPs, by transformers' names.

/// The activation of the gated MLPs (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HiddenAct {
    /// `silu` (also accepted as `swish`): x * sigmoid(x).
    Silu,
    /// `gelu`: the exact, erf-based GELU.
    Gelu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl HiddenAct {
    /// The names accepted in `hidden_act`.
    pub const SUPPORTED: &'static str = "silu, swish, gelu, gelu_pytorch_tanh, gelu_new, relu";

    /// Parses transformers' name of the activation; `None` if it is not supported.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => HiddenAct::Silu,
            "gelu" => HiddenAct::Gelu,
            "gelu_pytorch_tanh" | "gelu_new" => HiddenAct::GeluTanh,
            "relu" => HiddenAct::Relu,
            _ => return None,
        })
    }

    /// Applies the activation.
    pub fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            HiddenAct::Silu => candle_nn::ops::silu(x),
            HiddenAct::Gelu => x.gelu_erf(),
            HiddenAct::GeluTanh => x.gelu(),
            HiddenAct::Relu => x.relu(),
        }
    }
}
