//! Text generation: greedy or seeded sampling (temperature, top-k, top-p), stop at eos,
//! padded batches, a per-token callback for streaming, with a KV cache allocated once and
//! logits computed for the last position only.

mod config;
mod generate;
mod routes;
mod sampler;

pub use config::{Generation, GenerationConfig, GenerationDefaults, Sampling};
