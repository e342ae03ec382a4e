//! `AutoModelForCausalLM`: load or create a model of any linked family, dispatching on the
//! config's `model_type`; and each family's entry points ([`ForCausalLM`], declared in
//! `for_causal_lm.rs`, a module that depends on nothing, so that `family` can keep a deprecated
//! alias to it without importing this module).

use std::path::Path;
use std::sync::Arc;

use patch_core::{Builder, PatchSet};
use serde_json::Value;

use crate::Result;
use crate::causal_lm::CausalLM;
use crate::decoder::FamilyConfig;
use crate::explain::ModelExplain;
use crate::family::{Family, family, family_of};
use crate::for_causal_lm::ForCausalLM;
use crate::load_options::LoadOptions;
use crate::loading::{create_from_config, load_pretrained};

/// Loads or creates a causal LM of whichever linked family the config names (transformers'
/// `AutoModelForCausalLM`). Both entry points build with the registered patches.
#[derive(Clone, Copy, Debug)]
pub struct AutoModelForCausalLM;

impl AutoModelForCausalLM {
    /// Loads the checkpoint folder `dir` (`config.json` plus `model.safetensors` or a sharded
    /// checkpoint), or the Hub id `dir` names when no such folder exists (from the Hub cache,
    /// downloading when online: [`LoadOptions::hub`]): picks the family from `model_type`, converts the weights with the family's
    /// transforms (and those carried by replacements), and checks that every checkpoint tensor
    /// was used and every requested one found.
    ///
    /// ```no_run
    /// use patchwork_models::{AutoModelForCausalLM, LoadOptions};
    /// let model = AutoModelForCausalLM::from_pretrained("fixtures/llama-tiny", &LoadOptions::default())?;
    /// println!("{}", model.explain());
    /// # Ok::<(), patchwork_models::Error>(())
    /// ```
    pub fn from_pretrained(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<CausalLM> {
        load_pretrained(dir.as_ref(), None, options)
    }

    /// Creates a model with seeded random weights (`options.seed`) from a config JSON as
    /// published.
    ///
    /// ```
    /// use patchwork_models::{AutoModelForCausalLM, LoadOptions};
    /// let config = serde_json::json!({
    ///     "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
    ///     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    /// });
    /// let model = AutoModelForCausalLM::from_config(&config, &LoadOptions::default().with_seed(7))?;
    /// assert_eq!(model.model.layers.len(), 1);
    /// # Ok::<(), patchwork_models::Error>(())
    /// ```
    pub fn from_config(config: &Value, options: &LoadOptions) -> Result<CausalLM> {
        create_from_config(config, family_of(config, "config")?, options)
    }

    /// How the sites of `model_type`'s family resolve against the global registry now,
    /// without building anything.
    pub fn explain(model_type: &str) -> Result<ModelExplain> {
        let family = family(model_type, "explain")?;
        Ok(ModelExplain {
            model_type: family.model_type,
            architecture: family.architecture,
            explain: PatchSet::global().explain(family.all_sites()),
            report: None,
            implementations: None,
        })
    }
}

impl<M: Family> ForCausalLM<M> {
    /// Loads a checkpoint folder of this family with the registered patches (an error if its
    /// `model_type` is another family's).
    pub fn from_pretrained(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<CausalLM> {
        load_pretrained(dir.as_ref(), Some(M::family()), options)
    }

    /// A seeded random model for `config`, with the registered patches.
    pub fn from_config(config: &M::Config, options: &LoadOptions) -> Result<CausalLM> {
        create_from_config(&config.to_json(), M::family(), options)
    }

    /// Builds a model with `b` by hand: patches as `b` resolves them, so the originals unless
    /// built inside [`patch_core::apply_patches`] or with [`Builder::with_patches`]
    /// (transformers' `LlamaForCausalLM(config)`).
    pub fn build(b: &Builder, config: &M::Config) -> Result<CausalLM> {
        let json = Arc::new(config.to_json());
        CausalLM::build(b, config.decoder_config(json, "config")?, M::family())
    }
}
