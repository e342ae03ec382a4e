//! [`ForCausalLM`], declared apart from its entry points (in `auto.rs`): this module depends
//! on nothing, so `family` can name the type (its deprecated alias `family::ForCausalLM`)
//! without an import circle back through `auto`.

use std::marker::PhantomData;

/// A family's causal-LM entry points (transformers' `LlamaForCausalLM`, ...): each family
/// names it with a type alias (`pub type LlamaForCausalLM = ForCausalLM<LlamaModel>`).
#[derive(Clone, Copy, Debug)]
pub struct ForCausalLM<M>(PhantomData<M>);
