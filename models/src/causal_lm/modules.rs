//! The module tree: every built module with its dotted path (upstream's `named_modules`), and
//! lookups by path.

use patch_core::Module;

use super::CausalLM;
use crate::decoder::{DecoderLayer, FeedForward};
use crate::{Error, Result};

impl CausalLM {
    /// Every module of the model with its dotted path, in build order (parents first):
    /// upstream's `named_modules()`. The walk follows the standard children of the shared
    /// layer shapes (a decoder layer's `self_attn`, `mlp` and norms, an MoE block's router,
    /// experts and shared expert, an attention's head norms), so it keeps working through a
    /// replacement that exposes the same children
    /// ([`delegate_children!`](crate::delegate_children)).
    ///
    /// ```
    /// # use patchwork_models::{AutoModelForCausalLM, LoadOptions};
    /// # let config = serde_json::json!({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
    /// #     "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2});
    /// let model = AutoModelForCausalLM::from_config(&config, &LoadOptions::default())?;
    /// // "How do I know my patch works?": what was built where.
    /// for (path, module) in model.named_modules() {
    ///     println!("{path}: {}", module.type_name());
    /// }
    /// let attn = model.get_submodule_as::<patchwork_models::llama::LlamaAttention>("model.layers.1.self_attn")?;
    /// assert_eq!(attn.num_heads, 2);
    /// # Ok::<(), patchwork_models::Error>(())
    /// ```
    pub fn named_modules(&self) -> Vec<(String, &dyn Module)> {
        let mut out: Vec<(String, &dyn Module)> = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            walk_layer(&mut out, format!("model.layers.{i}"), &**layer);
        }
        out.push(("model.norm".into(), &*self.model.norm as &dyn Module));
        out.push((
            "model.rotary_emb".into(),
            &*self.model.rotary_emb as &dyn Module,
        ));
        out
    }

    /// The module at `path` (upstream's `get_submodule`); an error names the path and the
    /// module paths there are.
    pub fn get_submodule(&self, path: &str) -> Result<&dyn Module> {
        let modules = self.named_modules();
        if let Some((_, m)) = modules.iter().find(|(p, _)| p == path) {
            return Ok(*m);
        }
        let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
        let near: Vec<&str> = modules
            .iter()
            .map(|(p, _)| p.as_str())
            .filter(|p| parent.is_empty() || p.starts_with(parent))
            .take(12)
            .collect();
        Err(Error::input(
            "module path",
            format!(
                "no module at {path:?} (modules near it: {})",
                near.join(", ")
            ),
        ))
    }

    /// The module at `path` as a `T` (the concrete type built there); an error names the type
    /// that was built instead.
    pub fn get_submodule_as<T: std::any::Any>(&self, path: &str) -> Result<&T> {
        let module = self.get_submodule(path)?;
        module.as_any().downcast_ref::<T>().ok_or_else(|| {
            Error::input(
                "module path",
                format!(
                    "the module at {path:?} is a {}, not a {}",
                    module.type_name(),
                    std::any::type_name::<T>()
                ),
            )
        })
    }
}

/// Appends `layer` at `path` and its standard children, in the order they are built.
fn walk_layer<'a>(
    out: &mut Vec<(String, &'a dyn Module)>,
    path: String,
    layer: &'a dyn DecoderLayer,
) {
    out.push((path.clone(), layer as &dyn Module));
    if let Some(attn) = layer.self_attn() {
        let p = format!("{path}.self_attn");
        out.push((p.clone(), attn as &dyn Module));
        for (name, norm) in [("q_norm", attn.q_norm()), ("k_norm", attn.k_norm())] {
            if let Some(norm) = norm {
                out.push((format!("{p}.{name}"), norm as &dyn Module));
            }
        }
    }
    match layer.mlp() {
        Some(FeedForward::Dense(mlp)) => out.push((format!("{path}.mlp"), &**mlp as &dyn Module)),
        Some(FeedForward::Sparse(moe)) => {
            let p = format!("{path}.mlp");
            out.push((p.clone(), &**moe as &dyn Module));
            if let Some(shared) = moe.shared_expert() {
                out.push((format!("{p}.shared_expert"), shared as &dyn Module));
            }
            if let Some(gate) = moe.gate() {
                out.push((format!("{p}.gate"), gate as &dyn Module));
            }
            if let Some(experts) = moe.experts() {
                out.push((format!("{p}.experts"), experts as &dyn Module));
            }
        }
        None => {}
    }
    for (name, norm) in [
        ("input_layernorm", layer.input_layernorm()),
        ("post_attention_layernorm", layer.post_attention_layernorm()),
    ] {
        if let Some(norm) = norm {
            out.push((format!("{path}.{name}"), norm as &dyn Module));
        }
    }
}
