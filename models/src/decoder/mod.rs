//! The shared decoder: the slots (token embedding, projection, attention, MLP, norm, rotary
//! embedding, decoder layer, router, experts, sparse MoE block) with one config view ([`DecoderConfig`]) and explicit
//! forward contexts ([`LayerContext`]), so a replacement written once serves every family; the
//! building blocks the families' sites are thin types around ([`blocks`]); what a family is
//! made of ([`DecoderSites`], [`decoder_sites!`](crate::decoder_sites)); and the body
//! ([`DecoderModel`]) with its KV cache, masks and positions.
//!
//! Files hold one concept each: a slot per file (`attention.rs`, `mlp.rs`, `norm.rs`,
//! `rotary.rs`, `layer.rs`, `moe.rs`, `projection.rs`, `embedding.rs`), a block per file under `blocks/`, the config view
//! (`config.rs`), its checks (`config_check.rs`), the keys families share
//! (`config_keys.rs`), a family's config made of them (`family_config.rs`) and built by hand
//! (`config_builder.rs`), rope parameters, frequencies and tables under `rope/`.

mod activation;
mod attention;
pub mod blocks;
mod capture;
mod children;
mod config;
mod config_builder;
mod config_check;
mod config_keys;
mod context;
mod embedding;
mod extensions;
mod family_config;
mod fused;
mod kv_cache;
mod layer;
pub mod linear;
mod mlp;
mod model;
mod moe;
mod norm;
mod observed;
mod outputs;
mod positions;
mod projection;
pub mod rope;
mod rotary;
pub mod sites;

pub use activation::HiddenAct;
pub use attention::{Attention, AttentionArgs, attend};
pub use blocks::{
    GatedMlp, PreNormLayer, RmsNorm, SelfAttention, SparseMoeBlock, StackedExperts, TopKRouter,
};
pub use capture::{PassContext, Record, Recorded, Recorders, Records, Selection};
pub use children::Children;
pub use config::{AttentionKind, DecoderConfig, FeedForwardKind, MoeConfig};
pub(crate) use config_builder::family_setters;
pub use config_builder::{ConfigBuilder, HasKeys};
pub use config_check::{ConfigCheck, bounds};
pub use config_keys::{DecoderKeys, MoeKeys, SlidingWindowKeys};
pub use context::LayerContext;
pub use embedding::{Embedding, EmbeddingArgs, TokenEmbedding};
pub use extensions::Extensions;
pub use family_config::{FamilyConfig, key_group};
pub use fused::FusedProjections;
pub use kv_cache::{KvCache, LayerKvCache};
pub use layer::{DecoderLayer, DecoderLayerArgs, FeedForward};
pub use linear::{Linear, linear, norm_weight, projection};
pub use mlp::{Mlp, MlpArgs};
pub use model::{DecoderInput, DecoderModel, DecoderOutput, RouterRecord};
pub use moe::{Experts, MoeArgs, Router, SparseMoe};
pub use norm::{Norm, NormArgs};
pub use outputs::{LayerOutput, MoeOutput, RouterOutput};
pub use positions::Positions;
pub use projection::{Projection, ProjectionArgs, StackedProjections};
pub use rope::{RopeConfig, RopeScaling, RopeTables};
pub use rotary::{RotaryArgs, RotaryEmbedding};
pub use sites::{DecoderSites, MoeSites};
