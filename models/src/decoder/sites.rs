//! What a family is made of: the site types its decoder is built from ([`DecoderSites`],
//! [`MoeSites`]), and [`decoder_sites!`](crate::decoder_sites), which declares a family's sites
//! as thin types around the shared building blocks.
//!
//! A family module then holds its config differences, one `decoder_sites!` list (which also
//! writes the body type's `DecoderSites`, and `MoeSites` for MoE families), and whatever it
//! computes differently.

use patch_core::{Builder, Result, Site};

use crate::decoder::attention::Attention;
use crate::decoder::config::FeedForwardKind;
use crate::decoder::layer::{DecoderLayer, DecoderLayerArgs, FeedForward};
use crate::decoder::mlp::{Mlp, MlpArgs};
use crate::decoder::moe::{Experts, MoeArgs, Router, SparseMoe};
use crate::decoder::norm::Norm;
use crate::decoder::rotary::RotaryEmbedding;

/// The site types a family's decoder is built from: what the shared building blocks build at
/// each position (`self_attn`, `mlp`, norms, ...), so a patch of one of these names applies
/// wherever the family uses it.
pub trait DecoderSites: 'static {
    /// The RMS norm (`LlamaRMSNorm`), also the per-head q/k norm where the family has one.
    type Norm: Site<Slot = dyn Norm>;
    /// The rotary embedding (`LlamaRotaryEmbedding`).
    type RotaryEmbedding: Site<Slot = dyn RotaryEmbedding>;
    /// The self-attention (`LlamaAttention`).
    type Attention: Site<Slot = dyn Attention>;
    /// The dense MLP (`LlamaMLP`), also the shared expert of MoE blocks that have one.
    type Mlp: Site<Slot = dyn Mlp>;
    /// The decoder layer (`LlamaDecoderLayer`).
    type DecoderLayer: Site<Slot = dyn DecoderLayer>;

    /// Builds layer `args.layer_idx`'s feed-forward under `b` (at `mlp`): [`dense`] for dense
    /// families, [`dense_or_sparse`] for MoE ones.
    fn feed_forward(b: &Builder, args: DecoderLayerArgs<'_>) -> Result<FeedForward>;
}

/// The sites of a family with mixture-of-experts layers.
pub trait MoeSites: DecoderSites {
    /// The router (`Qwen2MoeTopKRouter`).
    type Router: Site<Slot = dyn Router>;
    /// The routed experts (`Qwen2MoeExperts`).
    type Experts: Site<Slot = dyn Experts>;
    /// The sparse block (`Qwen2MoeSparseMoeBlock`).
    type SparseMoe: Site<Slot = dyn SparseMoe>;
}

/// A dense MLP of `intermediate_size` (`S::Mlp`): the feed-forward of every layer of a dense
/// family.
pub fn dense<S: DecoderSites>(b: &Builder, args: DecoderLayerArgs<'_>) -> Result<FeedForward> {
    Ok(FeedForward::Dense(b.build::<S::Mlp>(MlpArgs {
        config: args.config,
        intermediate_size: args.config.intermediate_size,
    })?))
}

/// A sparse block (`S::SparseMoe`) on the layers the config makes sparse, a dense MLP on the
/// others ([`crate::decoder::DecoderConfig::feed_forward_kind`]).
pub fn dense_or_sparse<S: MoeSites>(
    b: &Builder,
    args: DecoderLayerArgs<'_>,
) -> Result<FeedForward> {
    match args.config.feed_forward_kind(args.layer_idx) {
        FeedForwardKind::Sparse => Ok(FeedForward::Sparse(b.build::<S::SparseMoe>(MoeArgs {
            config: args.config,
            layer_idx: args.layer_idx,
        })?)),
        FeedForwardKind::Dense => dense::<S>(b, args),
    }
}

/// Declares a family's decoder body type, its sites in forward order, and the list of them
/// (`explain` reads it).
///
/// Each entry `Name: Slot(Block) = constructor;` becomes a `#[patchable]` tuple struct
/// `pub struct Name(pub Block)` with `Deref` to the block (its fields read as upstream's:
/// `layer.self_attn`, `attn.q_proj`), `Name::new(b, args)` (what its `Build` impl calls,
/// returning the concrete type, so a replacement can hold and extend it), the `Build` impl,
/// and the slot's implementation forwarding to the block. The body type implements
/// [`DecoderSites`] with these sites, and [`MoeSites`] when there are `Router`, `Experts` and
/// `SparseMoe` entries (its layers' feed-forward is then [`dense_or_sparse`], else
/// [`dense`]).
///
/// ```ignore
/// decoder_sites! {
///     /// transformers' `LlamaModel`.
///     pub struct LlamaModel;
///     /// Llama's sites, as upstream's modeling file orders them.
///     pub const LLAMA_SITES;
///     /// transformers' `LlamaRMSNorm`.
///     LlamaRMSNorm: Norm(RmsNorm) = RmsNorm::load;
///     /// transformers' `LlamaDecoderLayer`.
///     LlamaDecoderLayer: DecoderLayer(PreNormLayer) = PreNormLayer::load::<LlamaModel>;
/// }
/// ```
#[macro_export]
macro_rules! decoder_sites {
    (
        $(#[$model_meta:meta])* $model_vis:vis struct $model:ident;
        $(#[$list_meta:meta])* $list_vis:vis const $list:ident;
        $( $(#[$meta:meta])* $site:ident: $slot:ident($block:ty) = $load:path; )+
    ) => {
        $(#[$model_meta])*
        #[derive(Clone, Copy, Debug)]
        $model_vis struct $model;

        impl $model {
            /// Formerly how a family's decoder body was built by hand.
            #[deprecated(
                since = "0.2.0",
                note = "use `DecoderModel::load::<Self>(b, config)`, or `ForCausalLM::build(b, &family_config)` for a whole model"
            )]
            pub fn build(
                b: &::patch_core::Builder,
                config: &::std::sync::Arc<$crate::decoder::DecoderConfig>,
            ) -> ::patch_core::Result<$crate::decoder::DecoderModel> {
                $crate::decoder::DecoderModel::load::<Self>(b, config)
            }
        }

        $( $crate::decoder_sites!(@site $(#[$meta])* $site: $slot($block) = $load); )+

        $(#[$list_meta])*
        $list_vis const $list: &[::patch_core::SiteInfo] =
            &[$(::patch_core::SiteInfo::of::<$site>(module_path!())),+];

        $crate::decoder_sites!(@sites $model; dense[] moe[]; $($slot $site;)+);
    };
    // Sorting the entries into the two traits' associated types (named as the slots).
    (@sites $model:ident; dense[$($d:tt)*] moe[$($m:tt)*]; Router $site:ident; $($rest:tt)*) => {
        $crate::decoder_sites!(@sites $model; dense[$($d)*] moe[$($m)* type Router = $site;]; $($rest)*);
    };
    (@sites $model:ident; dense[$($d:tt)*] moe[$($m:tt)*]; Experts $site:ident; $($rest:tt)*) => {
        $crate::decoder_sites!(@sites $model; dense[$($d)*] moe[$($m)* type Experts = $site;]; $($rest)*);
    };
    (@sites $model:ident; dense[$($d:tt)*] moe[$($m:tt)*]; SparseMoe $site:ident; $($rest:tt)*) => {
        $crate::decoder_sites!(@sites $model; dense[$($d)*] moe[$($m)* type SparseMoe = $site;]; $($rest)*);
    };
    (@sites $model:ident; dense[$($d:tt)*] moe[$($m:tt)*]; $slot:ident $site:ident; $($rest:tt)*) => {
        $crate::decoder_sites!(@sites $model; dense[$($d)* type $slot = $site;] moe[$($m)*]; $($rest)*);
    };
    (@sites $model:ident; dense[$($d:tt)*] moe[]; ) => {
        impl $crate::decoder::DecoderSites for $model {
            $($d)*
            fn feed_forward(
                b: &::patch_core::Builder,
                args: $crate::decoder::DecoderLayerArgs<'_>,
            ) -> ::patch_core::Result<$crate::decoder::FeedForward> {
                $crate::decoder::sites::dense::<Self>(b, args)
            }
        }
    };
    (@sites $model:ident; dense[$($d:tt)*] moe[$($m:tt)+]; ) => {
        impl $crate::decoder::DecoderSites for $model {
            $($d)*
            fn feed_forward(
                b: &::patch_core::Builder,
                args: $crate::decoder::DecoderLayerArgs<'_>,
            ) -> ::patch_core::Result<$crate::decoder::FeedForward> {
                $crate::decoder::sites::dense_or_sparse::<Self>(b, args)
            }
        }
        impl $crate::decoder::MoeSites for $model {
            $($m)+
        }
    };
    (@site $(#[$meta:meta])* $site:ident: $slot:ident($block:ty) = $load:path) => {
        $(#[$meta])*
        #[::patch_core::patchable]
        pub struct $site(pub $block);

        impl ::std::ops::Deref for $site {
            type Target = $block;
            fn deref(&self) -> &$block {
                &self.0
            }
        }

        impl $site {
            /// Builds it at the builder's path (what its `Build` impl does, returning the
            /// concrete type: a replacement can hold and extend it).
            pub fn new(
                b: &::patch_core::Builder,
                args: <dyn $crate::decoder::$slot as ::patch_core::Slot>::Args<'_>,
            ) -> ::patch_core::Result<Self> {
                Ok(Self($load(b, args)?))
            }
        }

        impl ::patch_core::Build for $site {
            type Slot = dyn $crate::decoder::$slot;
            fn build(
                b: &::patch_core::Builder,
                args: <dyn $crate::decoder::$slot as ::patch_core::Slot>::Args<'_>,
            ) -> ::patch_core::Result<Box<dyn $crate::decoder::$slot>> {
                Ok(Box::new(Self::new(b, args)?))
            }

            fn children<'a>(
                &'a self,
                visit: &mut dyn FnMut(&str, &'a dyn ::patch_core::Module),
            ) {
                $crate::decoder::Children::children(&self.0, visit)
            }
        }

        $crate::decoder_sites!(@forward $slot for $site);
    };
    (@forward Norm for $site:ident) => {
        impl $crate::decoder::Norm for $site {
            fn forward(
                &self,
                x: &::candle_core::Tensor,
                _: &$crate::decoder::PassContext,
            ) -> ::candle_core::Result<::candle_core::Tensor> {
                self.0.forward(x)
            }
        }
    };
    (@forward RotaryEmbedding for $site:ident) => {
        impl $crate::decoder::RotaryEmbedding for $site {
            fn forward(
                &self,
                positions: &$crate::decoder::Positions,
                dtype: ::candle_core::DType,
                device: &::candle_core::Device,
                _: &$crate::decoder::PassContext,
            ) -> ::candle_core::Result<$crate::decoder::RopeTables> {
                self.0.tables(positions, dtype, device)
            }
        }
    };
    (@forward Mlp for $site:ident) => {
        impl $crate::decoder::Mlp for $site {
            fn forward(
                &self,
                x: &::candle_core::Tensor,
                pass: &$crate::decoder::PassContext,
            ) -> ::candle_core::Result<::candle_core::Tensor> {
                self.0.forward_with(x, pass)
            }
        }
    };
    (@forward Attention for $site:ident) => {
        impl $crate::decoder::Attention for $site {
            fn forward(
                &self,
                hidden_states: &::candle_core::Tensor,
                ctx: &mut $crate::decoder::LayerContext<'_>,
            ) -> ::candle_core::Result<::candle_core::Tensor> {
                self.0.forward(hidden_states, ctx)
            }
        }
    };
    (@forward DecoderLayer for $site:ident) => {
        impl $crate::decoder::DecoderLayer for $site {
            fn forward(
                &self,
                hidden_states: &::candle_core::Tensor,
                ctx: &mut $crate::decoder::LayerContext<'_>,
            ) -> ::candle_core::Result<$crate::decoder::LayerOutput> {
                self.0.forward(hidden_states, ctx)
            }
        }
    };
    (@forward Router for $site:ident) => {
        impl $crate::decoder::Router for $site {
            fn forward(
                &self,
                x: &::candle_core::Tensor,
                ctx: &$crate::decoder::LayerContext<'_>,
            ) -> ::candle_core::Result<$crate::decoder::RouterOutput> {
                self.0.forward(x, ctx)
            }
        }
    };
    (@forward Experts for $site:ident) => {
        impl $crate::decoder::Experts for $site {
            fn forward(
                &self,
                x: &::candle_core::Tensor,
                indices: &::candle_core::Tensor,
                weights: &::candle_core::Tensor,
                pass: &$crate::decoder::PassContext,
            ) -> ::candle_core::Result<::candle_core::Tensor> {
                self.0.forward(x, indices, weights, pass)
            }
        }
    };
    (@forward SparseMoe for $site:ident) => {
        impl $crate::decoder::SparseMoe for $site {
            fn forward(
                &self,
                x: &::candle_core::Tensor,
                ctx: &$crate::decoder::LayerContext<'_>,
            ) -> ::candle_core::Result<$crate::decoder::MoeOutput> {
                self.0.forward(x, ctx)
            }
        }
    };
}

/// Formerly: inside a slot implementation for a wrapper, the accessors of the wrapped
/// module's children. Children now come from the module itself: a `#[patch(Site)]` wrapper
/// lists the children of the site it wraps, and a replacement holding what
/// `Builder::build_original` returned says so with `fn wraps(&self) -> Option<&dyn Module>`
/// in its `Build` impl. This macro expands to nothing and goes away in the next release.
#[deprecated(
    since = "0.2.0",
    note = "children come from the wrapped module: delete the call (for a replacement holding `build_original`'s result, implement `Build::wraps`)"
)]
#[macro_export]
macro_rules! delegate_children {
    ($slot:ident, $field:tt) => {};
}
