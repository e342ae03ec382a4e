//! The quantized storage formats a [`crate::decoder::Linear`] can hold its weight in: candle's
//! `QMatMul` blocks, quantized at load from the float checkpoint.

use candle_core::quantized::GgmlDType;

/// A weight format of candle's quantized matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quantization {
    /// 8-bit blocks of 32 weights with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit k-quant super-blocks of 256 weights (4.5 bits per weight).
    Q4K,
}

impl Quantization {
    /// Every format, in [`Quantization::name`] order.
    pub const ALL: [Quantization; 2] = [Quantization::Q8_0, Quantization::Q4K];

    /// The name the CLI and patch sets use (`q8_0`, `q4k`).
    pub fn name(self) -> &'static str {
        match self {
            Quantization::Q8_0 => "q8_0",
            Quantization::Q4K => "q4k",
        }
    }

    /// The format called `name` (case-insensitive; `q4_k` is accepted for `q4k`).
    pub fn from_name(name: &str) -> Option<Quantization> {
        match name.trim().to_ascii_lowercase().as_str() {
            "q8_0" => Some(Quantization::Q8_0),
            "q4k" | "q4_k" => Some(Quantization::Q4K),
            _ => None,
        }
    }

    /// candle's type for the format.
    pub fn ggml(self) -> GgmlDType {
        match self {
            Quantization::Q8_0 => GgmlDType::Q8_0,
            Quantization::Q4K => GgmlDType::Q4K,
        }
    }

    /// Weights per block: a quantized matrix's input width must be a multiple of it.
    pub fn block_size(self) -> usize {
        self.ggml().block_size()
    }

    /// Bytes a `rows x cols` matrix takes in this format (`cols` a multiple of the block).
    pub fn bytes(self, rows: usize, cols: usize) -> usize {
        let g = self.ggml();
        rows.saturating_mul(cols / g.block_size())
            .saturating_mul(g.type_size())
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_are_the_formats() {
        for q in Quantization::ALL {
            assert_eq!(Quantization::from_name(q.name()), Some(q));
        }
        assert_eq!(Quantization::from_name("Q4_K"), Some(Quantization::Q4K));
        assert_eq!(Quantization::from_name("q2k"), None);
        assert_eq!(Quantization::Q8_0.block_size(), 32);
        assert_eq!(Quantization::Q4K.block_size(), 256);
        // 34 bytes per 32 weights; 144 per 256.
        assert_eq!(Quantization::Q8_0.bytes(2, 64), 2 * 2 * 34);
        assert_eq!(Quantization::Q4K.bytes(1, 512), 2 * 144);
    }
}
