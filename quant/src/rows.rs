//! `RowQuantizer`: a weight quantized a few rows at a time, so that the float matrix is never
//! whole in memory (fed by [`patch_checkpoint::Weights::get_unkept_chunks`]).

use std::sync::Arc;

use candle_core::quantized::{QTensor, ggml_file};
use candle_core::{DType, Device, Storage, Tensor};
use patchwork_kernels::q8_0::Q8_0Matrix;

use crate::weight::Stored;
use crate::{Format, QuantizedWeight};

/// Builds a `[rows, cols]` [`QuantizedWeight`] from consecutive chunks of rows
/// ([`RowQuantizer::push`]), each quantized as it arrives: rows quantize independently in
/// every format, so the result is the one [`QuantizedWeight::quantize`] gives the whole
/// matrix, bit for bit, and the floats held at once are one chunk's.
#[derive(Debug)]
pub struct RowQuantizer {
    format: Format,
    rows: usize,
    cols: usize,
    filled: usize,
    acc: Acc,
}

/// What the chunks became so far.
#[derive(Debug)]
enum Acc {
    /// This project's Q8_0 blocks, filled in place.
    Q8_0(Q8_0Matrix),
    /// ggml blocks, in an eight-byte aligned buffer (candle reads them in place).
    Blocks { words: Vec<u64>, len: usize },
    /// float16 or bfloat16 rows.
    Half(Vec<Tensor>),
}

fn too_large(format: Format, rows: usize, cols: usize) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "a [{rows}, {cols}] weight in {format} is too large to allocate"
    ))
}

impl Acc {
    fn blocks(format: Format, rows: usize, cols: usize) -> candle_core::Result<Self> {
        let len = format
            .bytes(rows, cols)
            .ok_or_else(|| too_large(format, rows, cols))?;
        Ok(Acc::Blocks {
            words: vec![0u64; len.div_ceil(8)],
            len: 0,
        })
    }
}

/// Float values read per chunk when quantizing at load (4 MiB of float32): small against any
/// weight worth quantizing, large enough that reading stays sequential.
const CHUNK_VALUES: usize = 1 << 20;

impl RowQuantizer {
    /// Rows per chunk of a weight with `cols` inputs: about [`CHUNK_VALUES`] values, at least
    /// one row.
    pub(crate) fn chunk_rows(cols: usize) -> usize {
        (CHUNK_VALUES / cols.max(1)).max(1)
    }

    /// A quantizer of `[rows, cols]` into `format`; an error when `cols` does not fit the
    /// format's blocks ([`Format::fits`]) or the size overflows.
    pub fn new(format: Format, rows: usize, cols: usize) -> candle_core::Result<Self> {
        Self::check(format, rows, cols)?;
        let acc = match format {
            Format::Q8_0 => Acc::Q8_0(
                Q8_0Matrix::zeros(rows, cols).ok_or_else(|| too_large(format, rows, cols))?,
            ),
            Format::F16 | Format::Bf16 => Acc::Half(Vec::new()),
            _ => Acc::blocks(format, rows, cols)?,
        };
        Ok(Self {
            format,
            rows,
            cols,
            filled: 0,
            acc,
        })
    }

    /// A quantizer of `[rows, cols]` into `format` as ggml lays the blocks out in every format
    /// (Q8_0 and the float formats too), for [`RowQuantizer::finish_qtensor`]: what a table
    /// looked up by rows keeps.
    pub fn ggml(format: Format, rows: usize, cols: usize) -> candle_core::Result<Self> {
        Self::check(format, rows, cols)?;
        Ok(Self {
            format,
            rows,
            cols,
            filled: 0,
            acc: Acc::blocks(format, rows, cols)?,
        })
    }

    fn check(format: Format, rows: usize, cols: usize) -> candle_core::Result<()> {
        if !format.fits(cols) {
            candle_core::bail!(
                "{format} stores rows in blocks of {}, and this weight [{rows}, {cols}] has {cols} inputs",
                format.block_size()
            );
        }
        Ok(())
    }

    /// Quantizes the next rows (`chunk`: `[n, cols]`, any float dtype, on the CPU).
    pub fn push(&mut self, chunk: &Tensor) -> candle_core::Result<()> {
        let (n, cols) = chunk.dims2()?;
        if cols != self.cols || self.filled + n > self.rows {
            candle_core::bail!(
                "rows {}..{} of [{}, {}] given as [{n}, {cols}]",
                self.filled,
                self.filled + n,
                self.rows,
                self.cols
            );
        }
        if !chunk.device().is_cpu() {
            candle_core::bail!(
                "quantized weights live on the CPU; this one is on {:?}",
                chunk.device()
            );
        }
        let first = self.filled;
        match &mut self.acc {
            Acc::Q8_0(m) => with_f32(chunk, |v| m.quantize_rows(first, v))?,
            Acc::Half(parts) => {
                let dtype = if self.format == Format::F16 {
                    DType::F16
                } else {
                    DType::BF16
                };
                parts.push(chunk.to_dtype(dtype)?.contiguous()?);
            }
            Acc::Blocks { words, len } => {
                // candle quantizes a tensor's storage from its start: a view at an offset (one
                // expert of a stack) is copied out first.
                let q = with_f32(chunk, |v| {
                    let t = Tensor::from_slice(v, (n, cols), &Device::Cpu)?;
                    QTensor::quantize(&t, self.format.ggml())
                })??;
                let data = q.data()?;
                let bytes = bytemuck::cast_slice_mut::<u64, u8>(words.as_mut_slice());
                let end = *len + data.len();
                bytes
                    .get_mut(*len..end)
                    .ok_or_else(|| candle_core::Error::Msg("quantized rows overflow".into()))?
                    .copy_from_slice(&data);
                *len = end;
            }
        }
        self.filled += n;
        Ok(())
    }

    /// The weight, once every row was pushed.
    pub fn finish(self) -> candle_core::Result<QuantizedWeight> {
        let (format, rows, cols) = (self.format, self.rows, self.cols);
        self.complete()?;
        let stored = match self.acc {
            Acc::Q8_0(m) => Stored::Q8_0(m),
            Acc::Half(parts) => Stored::F16(Tensor::cat(&parts, 0)?),
            blocks @ Acc::Blocks { .. } => {
                let q = Arc::new(blocks.qtensor(format, rows, cols)?);
                return QuantizedWeight::from_qtensor(q);
            }
        };
        Ok(QuantizedWeight::from_stored(stored, format, rows, cols))
    }

    /// The blocks as a candle `QTensor` `[rows, cols]`, once every row was pushed to a
    /// quantizer made by [`RowQuantizer::ggml`].
    pub fn finish_qtensor(self) -> candle_core::Result<QTensor> {
        self.complete()?;
        match self.acc {
            blocks @ Acc::Blocks { .. } => blocks.qtensor(self.format, self.rows, self.cols),
            _ => candle_core::bail!(
                "{} rows in this project's layout: make the quantizer with RowQuantizer::ggml",
                self.format
            ),
        }
    }

    fn complete(&self) -> candle_core::Result<()> {
        if self.filled != self.rows {
            candle_core::bail!(
                "{} of {} rows of [{}, {}] given",
                self.filled,
                self.rows,
                self.rows,
                self.cols
            );
        }
        Ok(())
    }
}

impl Acc {
    fn qtensor(self, format: Format, rows: usize, cols: usize) -> candle_core::Result<QTensor> {
        let Acc::Blocks { words, len } = self else {
            candle_core::bail!("internal: not ggml blocks");
        };
        let bytes = &bytemuck::cast_slice::<u64, u8>(&words)[..len];
        ggml_file::qtensor_from_ggml(format.ggml(), bytes, vec![rows, cols], &Device::Cpu)
    }
}

/// Runs `f` on `t`'s values as float32: borrowed when `t` is a contiguous float32 CPU tensor,
/// converted (one copy) otherwise.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    if t.dtype() == DType::F32 {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets())
            && let Some(values) = cpu.as_slice::<f32>()?.get(start..end)
        {
            return Ok(f(values));
        }
    }
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&values))
}
