//! The building blocks the families' sites are thin types around: each one loads its weights
//! (and builds its sub-sites as the family's site types) and computes with [`crate::ops`].

mod gated_mlp;
mod pre_norm_layer;
mod rms_norm;
mod self_attention;
mod sparse_moe_block;
mod stacked_experts;
mod top_k_router;

pub use gated_mlp::GatedMlp;
pub use pre_norm_layer::PreNormLayer;
pub use rms_norm::RmsNorm;
pub use self_attention::SelfAttention;
pub use sparse_moe_block::SparseMoeBlock;
pub use stacked_experts::StackedExperts;
pub use top_k_router::TopKRouter;
