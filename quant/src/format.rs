//! The storage formats a projection's weight can be quantized into, and the fallback when a
//! weight's rows do not fit a format's blocks.

use std::fmt;

use candle_core::quantized::GgmlDType;

/// A weight format: this project's Q8_0 blocks, candle's ggml block formats, or float16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// 8-bit blocks of 32 weights with one f16 scale (8.5 bits per weight), computed with
    /// this project's integer dot-product kernels.
    Q8_0,
    /// 5-bit blocks of 32 with a scale and a minimum (6 bits per weight).
    Q5_1,
    /// 5-bit blocks of 32 with a scale (5.5 bits per weight).
    Q5_0,
    /// 4-bit blocks of 32 with a scale and a minimum (5 bits per weight).
    Q4_1,
    /// 4-bit blocks of 32 with a scale (4.5 bits per weight).
    Q4_0,
    /// 6-bit k-quant super-blocks of 256 (6.56 bits per weight).
    Q6K,
    /// 5-bit k-quant super-blocks of 256 (5.5 bits per weight).
    Q5K,
    /// 4-bit k-quant super-blocks of 256 (4.5 bits per weight).
    Q4K,
    /// 3-bit k-quant super-blocks of 256 (3.44 bits per weight).
    Q3K,
    /// 2-bit k-quant super-blocks of 256 (2.63 bits per weight).
    Q2K,
    /// Float16, for rows no block format fits (16 bits per weight).
    F16,
    /// bfloat16, as some GGUF files store weights (16 bits per weight); computed with the
    /// float kernels, which widen it as they read.
    Bf16,
}

impl Format {
    /// Every format, most bits first.
    pub const ALL: [Format; 12] = [
        Format::F16,
        Format::Bf16,
        Format::Q8_0,
        Format::Q6K,
        Format::Q5_1,
        Format::Q5K,
        Format::Q5_0,
        Format::Q4_1,
        Format::Q4K,
        Format::Q4_0,
        Format::Q3K,
        Format::Q2K,
    ];

    /// The name the CLI and topologies use (`q8_0`, `q4_k`, `f16`), as llama.cpp spells the
    /// types in lower case.
    pub fn name(self) -> &'static str {
        match self {
            Format::Q8_0 => "q8_0",
            Format::Q5_1 => "q5_1",
            Format::Q5_0 => "q5_0",
            Format::Q4_1 => "q4_1",
            Format::Q4_0 => "q4_0",
            Format::Q6K => "q6_k",
            Format::Q5K => "q5_k",
            Format::Q4K => "q4_k",
            Format::Q3K => "q3_k",
            Format::Q2K => "q2_k",
            Format::F16 => "f16",
            Format::Bf16 => "bf16",
        }
    }

    /// The format called `name`: case-insensitive, with or without the underscore before
    /// `k` (`Q4_K`, `q4k`). `None` for any other name.
    pub fn from_name(name: &str) -> Option<Format> {
        let lower = name.trim().to_ascii_lowercase();
        let key = lower.replace("_k", "k");
        Format::ALL
            .into_iter()
            .find(|f| f.name().replace("_k", "k") == key)
    }

    /// The ggml type candle stores it as.
    pub fn ggml(self) -> GgmlDType {
        match self {
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q5_1 => GgmlDType::Q5_1,
            Format::Q5_0 => GgmlDType::Q5_0,
            Format::Q4_1 => GgmlDType::Q4_1,
            Format::Q4_0 => GgmlDType::Q4_0,
            Format::Q6K => GgmlDType::Q6K,
            Format::Q5K => GgmlDType::Q5K,
            Format::Q4K => GgmlDType::Q4K,
            Format::Q3K => GgmlDType::Q3K,
            Format::Q2K => GgmlDType::Q2K,
            Format::F16 => GgmlDType::F16,
            Format::Bf16 => GgmlDType::BF16,
        }
    }

    /// Weights per block: a row's length (the input width) must be a multiple of it.
    pub fn block_size(self) -> usize {
        self.ggml().block_size()
    }

    /// Bytes a `rows x cols` matrix takes (`cols` a multiple of the block), `None` on overflow.
    pub fn bytes(self, rows: usize, cols: usize) -> Option<usize> {
        let g = self.ggml();
        rows.checked_mul(cols / g.block_size())?
            .checked_mul(g.type_size())
    }

    /// Whether rows of `cols` weights fit this format's blocks.
    pub fn fits(self, cols: usize) -> bool {
        cols > 0 && cols.is_multiple_of(self.block_size())
    }

    /// The format llama.cpp's quantizer falls back to when rows do not fit this one
    /// (`tensor_type_fallback`): a k-quant to the 32-weight format of about its size
    /// (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, Q2_K and Q3_K to Q4_0), a 32-weight format
    /// to F16; `None` for F16. (llama.cpp sends Q2_K/Q3_K to IQ4_NL, a format candle lacks;
    /// Q4_0 is the same size.)
    pub fn fallback(self) -> Option<Format> {
        match self {
            Format::Q4K => Some(Format::Q5_0),
            Format::Q5K => Some(Format::Q5_1),
            Format::Q6K => Some(Format::Q8_0),
            Format::Q2K | Format::Q3K => Some(Format::Q4_0),
            Format::Q8_0 | Format::Q5_1 | Format::Q5_0 | Format::Q4_1 | Format::Q4_0 => {
                Some(Format::F16)
            }
            Format::F16 | Format::Bf16 => None,
        }
    }

    /// The format rows of `cols` weights end up in when `self` is asked for, following
    /// [`Format::fallback`] until one fits, with the reason of each step; `None` when not
    /// even F16 fits (an empty row).
    pub fn fitted(self, cols: usize) -> Option<(Format, Vec<String>)> {
        let mut format = self;
        let mut why = Vec::new();
        loop {
            if format.fits(cols) {
                return Some((format, why));
            }
            why.push(format!(
                "{format} needs rows in blocks of {}, these have {cols}",
                format.block_size()
            ));
            format = format.fallback()?;
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_accept_the_common_spellings() {
        for f in Format::ALL {
            assert_eq!(Format::from_name(f.name()), Some(f));
            assert_eq!(Format::from_name(&f.name().to_uppercase()), Some(f));
        }
        assert_eq!(Format::from_name("q4k"), Some(Format::Q4K));
        assert_eq!(Format::from_name("Q6_K"), Some(Format::Q6K));
        assert_eq!(Format::from_name("q4_k_m"), None);
        assert_eq!(Format::from_name("iq4_nl"), None);
    }

    #[test]
    fn sizes_are_the_formats() {
        assert_eq!(Format::Q8_0.bytes(2, 64), Some(2 * 2 * 34));
        assert_eq!(Format::Q4K.bytes(1, 512), Some(2 * 144));
        assert_eq!(Format::Q4_0.bytes(1, 32), Some(18));
        assert_eq!(Format::F16.bytes(3, 5), Some(30));
        assert_eq!(Format::Q8_0.bytes(usize::MAX, 64), None);
    }

    /// llama.cpp's table, and F16 when not even a 32-weight block fits.
    #[test]
    fn fallbacks_follow_llama_cpp() {
        let fit = |f: Format, cols| f.fitted(cols).map(|(f, _)| f);
        assert_eq!(fit(Format::Q4K, 512), Some(Format::Q4K));
        assert_eq!(fit(Format::Q4K, 320), Some(Format::Q5_0));
        assert_eq!(fit(Format::Q5K, 320), Some(Format::Q5_1));
        assert_eq!(fit(Format::Q6K, 576), Some(Format::Q8_0));
        assert_eq!(fit(Format::Q2K, 96), Some(Format::Q4_0));
        assert_eq!(fit(Format::Q3K, 96), Some(Format::Q4_0));
        assert_eq!(fit(Format::Q4K, 144), Some(Format::F16));
        assert_eq!(fit(Format::Q8_0, 144), Some(Format::F16));
        assert_eq!(fit(Format::F16, 0), None);
        let (_, why) = Format::Q4K.fitted(144).unwrap();
        assert_eq!(
            why,
            [
                "q4_k needs rows in blocks of 256, these have 144",
                "q5_0 needs rows in blocks of 32, these have 144"
            ]
        );
    }
}
