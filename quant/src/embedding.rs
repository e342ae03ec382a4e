//! `QuantizedEmbedding`: the token embedding table held in ggml blocks, dequantizing only the
//! rows a pass looks up (llama.cpp quantizes `token_embd` too), from a topology or as a GGUF
//! file stores it.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::Init;
use patch_core::{Build, Builder, Result};
use patchwork_models::decoder::{EmbeddingArgs, PassContext, TokenEmbedding};

use crate::{Format, RowQuantizer, Topology};

/// A `[vocab, hidden]` token embedding in ggml blocks (any [`Format`], or a GGUF file's
/// type): a lookup dequantizes the rows of the ids asked for, so the float table never
/// exists; [`TokenEmbedding::table`] dequantizes it whole for a head tied to it.
#[derive(Debug)]
pub struct QuantizedEmbedding {
    table: Arc<QTensor>,
    rows: usize,
    cols: usize,
}

impl QuantizedEmbedding {
    /// The embedding over `table` (`[vocab, hidden]` blocks).
    pub fn from_qtensor(table: Arc<QTensor>) -> candle_core::Result<Self> {
        let (rows, cols) = table.shape().dims2()?;
        Ok(Self { table, rows, cols })
    }

    /// Builds the embedding at `b`'s path (`model.embed_tokens`) in the format `topology`
    /// gives it, or what the site builds without this replacement where it gives float. The
    /// table is read and quantized a few rows at a time (unkept: saving reads it again).
    pub fn build_with(
        topology: &Topology,
        b: &Builder,
        args: EmbeddingArgs<'_>,
    ) -> Result<Box<dyn TokenEmbedding>> {
        let c = args.config;
        let (rows, cols) = (c.vocab_size, c.hidden_size);
        let choice = topology.choose(b.path(), cols);
        b.describe(format!("{} (rows dequantized as looked up)", choice.reason));
        let Some(format) = choice.format else {
            return b.build_original(args);
        };
        if b.weights().is_trainable() {
            return Err(patch_core::Error::other(format!(
                "{format} at {:?}: quantized weights are for inference; load without trainable()",
                b.path()
            )));
        }
        let failed = |e: &dyn std::fmt::Display| {
            patch_core::Error::other(format!("{format} at {:?}: {e}", b.path()))
        };
        let init = Init::Randn {
            mean: 0.0,
            stdev: c.initializer_range,
        };
        let mut q = RowQuantizer::ggml(format, rows, cols).map_err(|e| failed(&e))?;
        b.weights()
            .get_unkept_chunks(
                (rows, cols),
                "weight",
                init,
                RowQuantizer::chunk_rows(cols),
                &mut |chunk| Ok(q.push(&chunk)?),
            )
            .map_err(|e| failed(&e))?;
        let table = q.finish_qtensor().map_err(|e| failed(&e))?;
        let embedding = Self::from_qtensor(Arc::new(table)).map_err(|e| failed(&e))?;
        Ok(Box::new(embedding))
    }

    /// The table's ggml type.
    pub fn format(&self) -> candle_core::quantized::GgmlDType {
        self.table.dtype()
    }
}

impl Build for QuantizedEmbedding {
    type Slot = dyn TokenEmbedding;

    /// Built alone (registered by type, not through a topology): the table in Q8_0.
    fn build(b: &Builder, args: EmbeddingArgs<'_>) -> Result<Box<dyn TokenEmbedding>> {
        Self::build_with(&Topology::new(Some(Format::Q8_0)), b, args)
    }
}

impl TokenEmbedding for QuantizedEmbedding {
    fn forward(&self, input_ids: &Tensor, _: &PassContext) -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = input_ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
        let dtype = self.table.dtype();
        let row = self.cols / dtype.block_size() * dtype.type_size();
        let data = self.table.data()?;
        let mut gathered = Vec::with_capacity(ids.len() * row);
        for &id in &ids {
            let id = id as usize;
            if id >= self.rows {
                candle_core::bail!(
                    "token id {id} is not below the vocabulary size {}",
                    self.rows
                );
            }
            gathered.extend_from_slice(&data[id * row..(id + 1) * row]);
        }
        let storage = QStorage::from_data(Cow::Owned(gathered), &Device::Cpu, dtype)?;
        let rows = QTensor::new(storage, (ids.len(), self.cols))?.dequantize(&Device::Cpu)?;
        let mut dims = input_ids.dims().to_vec();
        dims.push(self.cols);
        rows.reshape(dims)
    }

    fn table(&self) -> Option<Tensor> {
        self.table.dequantize(&Device::Cpu).ok()
    }
}
