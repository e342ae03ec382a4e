//! Modules computing on a GGUF file's quantized blocks as stored: the projections, the expert
//! banks and the token embedding. Registered as the models' packed patches
//! ([`patchwork_models::PackedPatches`]): every load of a GGUF file adds them, below the
//! default priority, so a topology or a patch of the user's at the same sites wins and can wrap
//! them.

use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::Init;
use patch_core::{Build, Builder, Module, PatchKey, PatchSet, Replacement, Result};
use patchwork_models::decoder::{
    EmbeddingArgs, Experts, MoeArgs, PassContext, Projection, ProjectionArgs, TokenEmbedding,
};

use crate::{QuantizedExperts, QuantizedLinear, QuantizedWeight};

/// The priority of the GGUF patches: below a topology's ([`crate::PRIORITY`]) and the default.
pub const GGUF_PRIORITY: i32 = -200;

/// A projection computing on the blocks a GGUF file stores (transformers' `GgufLinear`), or
/// what the site builds otherwise where the file stores floats.
pub struct GgufLinear(pub QuantizedLinear);

impl Build for GgufLinear {
    type Slot = dyn Projection;

    fn build(b: &Builder, args: ProjectionArgs<'_>) -> Result<Box<dyn Projection>> {
        let shape = (args.out_features, args.in_features);
        let Some(q) = b.weights().get_packed(shape, "weight")? else {
            return b.build_original(args);
        };
        let weight = QuantizedWeight::from_qtensor(q)
            .map_err(|e| patch_core::Error::other(format!("GGUF tensor at {:?}: {e}", b.path())))?;
        b.describe(format!("{} (as stored)", weight.format()));
        let bias = if args.bias {
            Some(b.get_with_init(args.out_features, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Box::new(Self(QuantizedLinear::new(weight, bias))))
    }

    fn wraps(&self) -> Option<&dyn Module> {
        Some(&self.0)
    }
}

impl Projection for GgufLinear {
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        self.0.forward(x, pass)
    }

    fn in_features(&self) -> usize {
        self.0.in_features()
    }

    fn out_features(&self) -> usize {
        self.0.out_features()
    }
}

/// Routed experts computing on the banks a GGUF file stores (`ffn_gate_exps`, `ffn_up_exps`,
/// `ffn_down_exps`), or what the site builds otherwise where the file stores floats.
pub struct GgufExperts(pub QuantizedExperts);

impl Build for GgufExperts {
    type Slot = dyn Experts;

    fn build(b: &Builder, args: MoeArgs<'_>) -> Result<Box<dyn Experts>> {
        let c = args.config;
        let moe = c.moe()?;
        let (e, i, h) = (moe.num_experts, moe.moe_intermediate_size, c.hidden_size);
        let w = b.weights();
        // Gate and up stacked per expert (one product for both), as the float experts hold
        // them; a file whose gate and up differ in type computes on floats.
        let (Some(gate_up), Some(down)) = (
            w.get_packed((e, 2 * i, h), "gate_up_proj")?,
            w.get_packed((e, h, i), "down_proj")?,
        ) else {
            return b.build_original(args);
        };
        let split = |q: &QTensor| {
            QuantizedWeight::split_qtensor(q).map_err(|err| {
                patch_core::Error::other(format!("GGUF experts at {:?}: {err}", b.path()))
            })
        };
        b.describe(format!(
            "gate_up {:?}, down {:?} (as stored)",
            gate_up.dtype(),
            down.dtype()
        ));
        Ok(Box::new(Self(QuantizedExperts::stacked(
            split(&gate_up)?,
            split(&down)?,
            c.hidden_act,
        ))))
    }

    fn wraps(&self) -> Option<&dyn Module> {
        Some(&self.0)
    }
}

impl Experts for GgufExperts {
    fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
        pass: &PassContext,
    ) -> candle_core::Result<Tensor> {
        self.0.forward(x, indices, weights, pass)
    }
}

/// The token embedding as a GGUF file stores it (quantized blocks), dequantizing only the rows
/// a pass looks up; or what the site builds otherwise where the file stores floats.
pub struct GgufEmbedding {
    table: Arc<QTensor>,
    rows: usize,
    cols: usize,
}

impl Build for GgufEmbedding {
    type Slot = dyn TokenEmbedding;

    fn build(b: &Builder, args: EmbeddingArgs<'_>) -> Result<Box<dyn TokenEmbedding>> {
        let (rows, cols) = (args.config.vocab_size, args.config.hidden_size);
        let Some(table) = b.weights().get_packed((rows, cols), "weight")? else {
            return b.build_original(args);
        };
        b.describe(format!(
            "{:?} (as stored; rows dequantized as looked up)",
            table.dtype()
        ));
        Ok(Box::new(Self { table, rows, cols }))
    }
}

impl TokenEmbedding for GgufEmbedding {
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
        let storage = QStorage::from_data(std::borrow::Cow::Owned(gathered), &Device::Cpu, dtype)?;
        let rows = QTensor::new(storage, (ids.len(), self.cols))?.dequantize(&Device::Cpu)?;
        let mut dims = input_ids.dims().to_vec();
        dims.push(self.cols);
        rows.reshape(dims)
    }

    fn table(&self) -> Option<Tensor> {
        self.table.dequantize(&Device::Cpu).ok()
    }
}

/// The GGUF patches: [`GgufLinear`] at every projection site, [`GgufExperts`] at every
/// routed-experts site, [`GgufEmbedding`] at the token embedding, each with priority
/// [`GGUF_PRIORITY`].
pub fn gguf_patches() -> PatchSet {
    PatchSet::from_mapping([
        (
            PatchKey::new("Linear"),
            Replacement::of::<GgufLinear>().with_priority(GGUF_PRIORITY),
        ),
        (
            PatchKey::new("Experts$"),
            Replacement::of::<GgufExperts>().with_priority(GGUF_PRIORITY),
        ),
        (
            PatchKey::new("Embedding"),
            Replacement::of::<GgufEmbedding>().with_priority(GGUF_PRIORITY),
        ),
    ])
    .unwrap_or_default()
}

patchwork_models::register_packed_patches!(gguf_patches);
