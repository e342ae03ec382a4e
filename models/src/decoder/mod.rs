//! The shared decoder contracts: slots (attention, MLP, norm, rotary embedding, decoder layer,
//! router, experts, sparse MoE block) with one config view ([`DecoderConfig`]) and explicit
//! forward contexts ([`LayerContext`]), so a replacement written once serves every family.
//!
//! Also the building blocks the families here assemble their sites from: [`SelfAttention`],
//! [`GatedMlp`], [`RmsNorm`], [`PreNormLayer`], the attention kernel ([`attend`],
//! [`scaled_dot_product_attention`]), the [`KvCache`], and the [`DecoderModel`] body.

pub mod attention;
pub mod config;
pub mod kv_cache;
pub mod layer;
pub mod linear;
pub mod mask;
pub mod mlp;
pub mod model;
pub mod moe;
pub mod norm;
pub mod positions;
pub mod rotary;

pub use attention::{
    Attention, AttentionArgs, SelfAttention, attend, scaled_dot_product_attention,
};
pub use config::{
    AttentionKind, ConfigCheck, DecoderConfig, FeedForwardKind, HiddenAct, MoeConfig,
};
pub use kv_cache::{KvCache, LayerKvCache};
pub use layer::{
    DecoderLayer, DecoderLayerArgs, FeedForward, LayerContext, LayerOutput, PreNormLayer,
};
pub use mlp::{GatedMlp, Mlp, MlpArgs};
pub use model::{DecoderInput, DecoderModel, RouterRecord};
pub use moe::{
    Experts, MoeArgs, MoeOutput, Router, RouterOutput, SparseMoe, StackedExperts, TopKRouter,
};
pub use norm::{Norm, NormArgs, RmsNorm};
pub use positions::Positions;
pub use rotary::{RopeConfig, RopeScaling, RopeTables, RotaryArgs, RotaryEmbedding};
