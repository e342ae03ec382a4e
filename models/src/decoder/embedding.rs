//! The token embedding slot (`nn.Embedding` upstream, at `model.embed_tokens`), and the
//! embedding site every family builds.

use candle_core::{DType, Tensor};
use candle_nn::Init;
use patch_core::{Build, Builder, Module, Observed, ObservedSite, Result, Slot, patchable};

use crate::decoder::capture::PassContext;
use crate::decoder::config::DecoderConfig;

/// The token embedding slot: token ids `[batch, seq]` (u32) to `[batch, seq, hidden]`.
pub trait TokenEmbedding: Module {
    /// Looks up the rows of `input_ids`.
    fn forward(&self, input_ids: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor>;

    /// The table `[vocab, hidden]` in a float dtype, for an output head tied to it; `None`
    /// when this embedding cannot give one.
    fn table(&self) -> Option<Tensor> {
        None
    }
}

/// What every token embedding constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingArgs<'a> {
    /// The model's config view (`vocab_size`, `hidden_size`, initialisation).
    pub config: &'a DecoderConfig,
}

impl Slot for dyn TokenEmbedding {
    const NAME: &'static str = "TokenEmbedding";
    type Args<'a> = EmbeddingArgs<'a>;

    fn observe(module: Box<Self>, site: ObservedSite) -> Box<Self> {
        Box::new(Observed::new(module, site))
    }
}

/// transformers' `nn.Embedding` as every family here uses it: a float table `weight`
/// `[vocab, hidden]` whose rows the token ids select.
#[patchable]
#[derive(Clone, Debug)]
pub struct Embedding {
    /// `[vocab, hidden]`.
    pub weight: Tensor,
}

impl Embedding {
    /// Loads `weight` under `b` (random sources: N(0, std), as transformers' `_init_weights`).
    pub fn load(b: &Builder, args: EmbeddingArgs<'_>) -> Result<Self> {
        let c = args.config;
        let weight = b.get_with_init(
            (c.vocab_size, c.hidden_size),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: c.initializer_range,
            },
        )?;
        Ok(Self { weight })
    }

    /// The rows of `input_ids` (`[batch, seq]`), `[batch, seq, hidden]`.
    pub fn forward(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = self.weight.dim(1)?;
        let mut dims = input_ids.dims().to_vec();
        let ids = input_ids.flatten_all()?.to_dtype(DType::U32)?;
        let rows = self.weight.index_select(&ids, 0)?;
        dims.push(hidden);
        rows.reshape(dims)
    }
}

impl Build for Embedding {
    type Slot = dyn TokenEmbedding;

    fn build(b: &Builder, args: EmbeddingArgs<'_>) -> Result<Box<dyn TokenEmbedding>> {
        Ok(Box::new(Self::load(b, args)?))
    }
}

impl TokenEmbedding for Embedding {
    fn forward(&self, input_ids: &Tensor, _: &PassContext) -> candle_core::Result<Tensor> {
        Embedding::forward(self, input_ids)
    }

    fn table(&self) -> Option<Tensor> {
        Some(self.weight.clone())
    }
}
