//! The module tree: every built module with its dotted path (upstream's `named_modules`), and
//! lookups by path.

use patch_core::{BuiltSite, Module, named_modules};

use super::CausalLM;
use crate::{Error, Result};

impl CausalLM {
    /// Every module of the model with its dotted path, in build order (parents first):
    /// upstream's `named_modules()`, from `model.embed_tokens` to `lm_head`. Each module lists
    /// its own children ([`Module::children`]), and a replacement wrapping a module lists the
    /// wrapped one's unless it says otherwise, so the walk reaches every projection and norm
    /// through any replacement.
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
    /// assert!(model.get_submodule("model.layers.1.self_attn.q_proj").is_ok());
    /// # Ok::<(), patchwork_models::Error>(())
    /// ```
    pub fn named_modules(&self) -> Vec<(String, &dyn Module)> {
        let mut out: Vec<(String, &dyn Module)> = Vec::new();
        self.model.children(&mut |name, module| {
            let path = format!("model.{name}");
            out.push((path.clone(), module));
            out.extend(named_modules(module, &path));
        });
        out.push(("lm_head".into(), &*self.lm_head as &dyn Module));
        out
    }

    /// The module at `path` (upstream's `get_submodule`); an error names the path and the
    /// module paths there are.
    pub fn get_submodule(&self, path: &str) -> Result<&dyn Module> {
        let modules = self.named_modules();
        if let Some((_, m)) = modules.iter().find(|(p, _)| p == path) {
            return Ok(*m);
        }
        Err(Error::input(
            "module path",
            format!(
                "no module at {path:?} (modules near it: {})",
                near(modules.iter().map(|(p, _)| p.as_str()), path)
            ),
        ))
    }

    /// What was built at `path` and why: the answer to "which patch won here?" in one call.
    /// [`BuiltSite::winner`] is the patch that chose it (`None`: the site's own type),
    /// [`BuiltSite::built`] whether a type was built there (or is wrapped there),
    /// [`BuiltSite::wraps`] what it wraps, [`BuiltSite::resolution`] every candidate and why
    /// each lost. An error names the path and the built paths near it.
    ///
    /// ```
    /// # use patchwork_models::{AutoModelForCausalLM, LoadOptions};
    /// use patchwork_models::llama::LlamaAttention;
    /// # let config = serde_json::json!({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
    /// #     "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2});
    /// let model = AutoModelForCausalLM::from_config(&config, &LoadOptions::default())?;
    /// let site = model.built_at("model.layers.0.self_attn")?;
    /// assert!(site.built::<LlamaAttention>());
    /// assert!(site.winner().is_none()); // no patch: the site's own type
    /// assert!(model.built_at("model.layers.9.self_attn").is_err());
    /// # Ok::<(), patchwork_models::Error>(())
    /// ```
    pub fn built_at(&self, path: &str) -> Result<&BuiltSite> {
        let report = self.report();
        report.at(path).ok_or_else(|| {
            Error::input(
                "module path",
                format!(
                    "nothing was built at {path:?} (built near it: {})",
                    near(report.sites().iter().map(|s| s.path.as_str()), path)
                ),
            )
        })
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

/// Up to 12 of `paths` under the parent of `path`, comma-separated (for errors).
fn near<'a>(paths: impl Iterator<Item = &'a str>, path: &str) -> String {
    let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
    let mut near: Vec<&str> = paths
        .filter(|p| parent.is_empty() || p.starts_with(parent))
        .collect();
    near.dedup();
    near.truncate(12);
    near.join(", ")
}
