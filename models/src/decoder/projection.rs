//! The projection slot: one linear map of the last dimension (`nn.Linear` upstream), built as a
//! site at its transformers module path (`model.layers.3.self_attn.q_proj`), so quantized,
//! adapter-carrying or rank-sharded projections are ordinary patches chosen by path.

use candle_core::Tensor;
use patch_core::{Module, Observed, ObservedSite, Slot};

use crate::decoder::capture::PassContext;
use crate::decoder::config::DecoderConfig;
use crate::decoder::embedding::TokenEmbedding;

/// The projection slot: `[..., in_features] -> [..., out_features]`.
pub trait Projection: Module {
    /// Applies the projection to `x`.
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor>;

    /// Width of the input.
    fn in_features(&self) -> usize;

    /// Width of the output.
    fn out_features(&self) -> usize;

    /// Where the builder built it, when it was built as a site (a fused parent records a
    /// part's output under it).
    fn observed_site(&self) -> Option<&ObservedSite> {
        None
    }

    /// This projection and `rest` (siblings reading the same input, in order: q/k/v,
    /// gate/up) computed together, their outputs side by side, when this type can (the
    /// quantized projections of one format do, sharing their weights rather than copying
    /// them); `None`, the default, computes each on its own. Float `Linear`s (the site's own
    /// type, found by `as_any`) are fused by the parent itself. A sibling of another type, or
    /// wrapped by a replacement, is not this type's to stack: return `None`.
    fn stack_with(&self, rest: &[&dyn Projection]) -> Option<Box<dyn StackedProjections>> {
        let _ = rest;
        None
    }
}

/// Sibling projections of one input computed together ([`Projection::stack_with`]).
pub trait StackedProjections: Send + Sync {
    /// The projections' outputs for `x`, side by side along the last dimension, in order.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}

/// What every projection constructor receives.
#[derive(Clone, Copy)]
pub struct ProjectionArgs<'a> {
    /// The model's config view (weight dtype, initialisation).
    pub config: &'a DecoderConfig,
    /// Width of the input.
    pub in_features: usize,
    /// Width of the output.
    pub out_features: usize,
    /// Whether it has a bias.
    pub bias: bool,
    /// The token embedding an output head is tied to (`tie_word_embeddings`): the
    /// projection computes with its table (`[vocab, hidden]`, `TokenEmbedding::table`) instead
    /// of loading a weight of its own. `None` to load its own.
    pub tied: Option<&'a dyn TokenEmbedding>,
}

impl<'a> ProjectionArgs<'a> {
    /// A projection of `in_features` to `out_features` with its own weight (and a bias when
    /// `bias`).
    pub fn new(
        config: &'a DecoderConfig,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Self {
        Self {
            config,
            in_features,
            out_features,
            bias,
            tied: None,
        }
    }
}

impl std::fmt::Debug for ProjectionArgs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionArgs")
            .field("in_features", &self.in_features)
            .field("out_features", &self.out_features)
            .field("bias", &self.bias)
            .field("tied", &self.tied.map(|e| e.type_name()))
            .finish()
    }
}

impl Slot for dyn Projection {
    const NAME: &'static str = "Projection";
    type Args<'a> = ProjectionArgs<'a>;

    fn observe(module: Box<Self>, site: ObservedSite) -> Box<Self> {
        Box::new(Observed::new(module, site))
    }
}
