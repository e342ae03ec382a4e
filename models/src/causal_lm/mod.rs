//! `CausalLM`: a decoder body with its output head, what `from_pretrained` returns. Its methods
//! by concept: building and settings (here), the forward pass ([`forward`]), the checks a pass
//! runs on its inputs ([`checks`]), training and saving ([`training`]), the module tree
//! ([`modules`]), explain ([`explain`]) and the non-finite diagnosis ([`diagnose`]).

mod checks;
mod diagnose;
mod explain;
mod forward;
mod modules;
mod options;
mod training;

use std::fmt;
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use patch_checkpoint::{Transform, Weights, checkpoint_conversion_mapping_for};
use patch_core::{BuildReport, Builder, PatchSet};

use crate::decoder::{DecoderConfig, DecoderModel};
use crate::decoder::{Linear, Projection, ProjectionArgs};
use crate::family::ModelFamily;
use crate::generation::GenerationDefaults;
use crate::implementations::{AttentionImplementation, ExpertsImplementation, Implementations};
use crate::{Error, Result};

pub use forward::ForwardOutput;
pub use options::{ForwardOptions, LogitsMode};

/// A causal language model: a [`DecoderModel`] body and an output head, plus what it was
/// built from (config, weights record, build report, patches) for explain and saving.
pub struct CausalLM {
    /// The decoder body (`model.*` weights).
    pub model: DecoderModel,
    /// The output head (`lm_head.weight`, or the embedding's table when tied), a projection
    /// site.
    pub lm_head: Box<dyn Projection>,
    family: &'static ModelFamily,
    weights: Weights,
    report: BuildReport,
    patches: PatchSet,
    transforms: Vec<Transform>,
    vars: Option<VarMap>,
    implementations: Implementations,
    max_positions: usize,
    generation_defaults: GenerationDefaults,
    load_report: Option<patch_checkpoint::LoadReport>,
}

impl fmt::Debug for CausalLM {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CausalLM")
            .field("model_type", &self.family.model_type)
            .field("layers", &self.model.layers.len())
            .field("dtype", &self.dtype())
            .finish()
    }
}

impl CausalLM {
    /// Builds `family`'s model for `config` with `b` (patches as `b` resolves them: see
    /// [`Builder`]): the body under `model`, and the output head `lm_head`, a projection site;
    /// with tied embeddings it computes with the embedding's table and `lm_head.weight` is
    /// never asked for (and never saved).
    pub fn build(b: &Builder, config: DecoderConfig, family: &'static ModelFamily) -> Result<Self> {
        let config = Arc::new(config);
        // What the registry says this config's checkpoints are converted with: saving reverses
        // it for tensors that did not come from a checkpoint (a model built from its config).
        let transforms = checkpoint_conversion_mapping_for(&config.json)?
            .map(|(_, t)| t)
            .unwrap_or_default();
        let model = (family.build_model)(&b.pp("model"), &config)?;
        let mut head = ProjectionArgs::new(&config, config.hidden_size, config.vocab_size, false);
        if config.tie_word_embeddings {
            b.weights()
                .tie("lm_head.weight", "model.embed_tokens.weight");
            head.tied = Some(&*model.embed_tokens);
        }
        let lm_head = b.pp("lm_head").build::<Linear>(head)?;
        let weights = b.weights().clone();
        let vars = weights.is_trainable().then(|| {
            let map = VarMap::new();
            {
                let mut data = map
                    .data()
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                data.extend(weights.params().vars());
            }
            map
        });
        let name = |key: &str, default: &str| {
            config
                .json
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or(default)
                .to_string()
        };
        let implementations = Implementations::resolve(
            &name("attn_implementation", "sdpa"),
            &name("experts_implementation", "grouped_mm"),
        )?;
        let max_positions = config.max_position_embeddings;
        Ok(Self {
            model,
            lm_head,
            family,
            weights,
            report: b.report(),
            patches: b.patches(),
            transforms,
            vars,
            implementations,
            max_positions,
            generation_defaults: GenerationDefaults::default(),
            load_report: None,
        })
    }

    /// The special token ids of the checkpoint's `generation_config.json` (empty when it has
    /// none, or the model was built from a config).
    pub fn generation_defaults(&self) -> &GenerationDefaults {
        &self.generation_defaults
    }

    /// Sets the generation defaults (what loading reads from `generation_config.json`).
    pub fn set_generation_defaults(&mut self, defaults: GenerationDefaults) {
        self.generation_defaults = defaults;
    }

    /// The tokens generation stops at by default: `generation_config.json`'s `eos_token_id`,
    /// else `config.json`'s.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.generation_defaults
            .eos_token_ids
            .clone()
            .unwrap_or_else(|| self.config().eos_token_ids.clone())
    }

    /// What loading the weights did (transforms fired, tensors and bytes read, time), for a
    /// model loaded from a checkpoint.
    pub fn load_report(&self) -> Option<&patch_checkpoint::LoadReport> {
        self.load_report.as_ref()
    }

    pub(crate) fn set_load_report(&mut self, report: patch_checkpoint::LoadReport) {
        self.load_report = Some(report);
    }

    /// How many positions a pass or a generation may reach: the config's
    /// `max_position_embeddings` unless [`set_max_positions`](Self::set_max_positions) (or
    /// [`LoadOptions::max_positions`](crate::LoadOptions::max_positions)) said otherwise.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Allows passes and generations to reach `positions` positions; past the config's
    /// `max_position_embeddings` the rotary embedding extrapolates, which is then the
    /// caller's choice.
    pub fn set_max_positions(&mut self, positions: usize) -> Result<()> {
        let max = crate::decoder::bounds::MAX_POSITIONS;
        if positions == 0 || positions > max {
            return Err(Error::input(
                "max_positions",
                format!("{positions} is not in 1..={max}"),
            ));
        }
        self.max_positions = positions;
        Ok(())
    }

    /// Fails when `what` would reach `positions` positions, past [`CausalLM::max_positions`].
    pub(crate) fn check_positions(&self, what: &str, positions: Option<usize>) -> Result<()> {
        match positions {
            Some(n) if n <= self.max_positions => Ok(()),
            _ => Err(Error::TooLong {
                what: what.to_string(),
                positions: positions.map_or_else(|| "more than 2^64".into(), |n| n.to_string()),
                limit: self.max_positions,
            }),
        }
    }

    /// The attention and experts implementations the model computes with.
    pub fn implementations(&self) -> &Implementations {
        &self.implementations
    }

    /// Computes attention with the implementation named `name` from now on (a model's own
    /// registration first, then the global ones): nothing is reloaded. An unknown name is an
    /// error listing the registered ones.
    pub fn set_attn_implementation(&mut self, name: &str) -> Result<()> {
        self.implementations.set_attention(name)
    }

    /// Computes routed experts with the implementation named `name` from now on.
    pub fn set_experts_implementation(&mut self, name: &str) -> Result<()> {
        self.implementations.set_experts(name)
    }

    /// Registers `implementation` for this model only (transformers' per-model local
    /// mapping): other models, loaded before or after, never see it. Select it with
    /// [`set_attn_implementation`](Self::set_attn_implementation).
    pub fn register_attention_implementation(&mut self, implementation: AttentionImplementation) {
        self.implementations
            .local_attention
            .insert(implementation.name.clone(), Arc::new(implementation));
    }

    /// Registers `implementation` for this model only; select it with
    /// [`set_experts_implementation`](Self::set_experts_implementation).
    pub fn register_experts_implementation(&mut self, implementation: ExpertsImplementation) {
        self.implementations
            .local_experts
            .insert(implementation.name.clone(), Arc::new(implementation));
    }

    /// The config view.
    pub fn config(&self) -> &DecoderConfig {
        self.model.config()
    }

    /// The config JSON as published (what saving writes back).
    pub fn config_json(&self) -> &serde_json::Value {
        &self.model.config().json
    }

    /// The family it belongs to.
    pub fn family(&self) -> &'static ModelFamily {
        self.family
    }

    /// The weights handle it was built from; its `params()` is the state dict.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Every site built, where, and which patch replaced it.
    pub fn report(&self) -> &BuildReport {
        &self.report
    }

    /// The patches it was built with.
    pub fn patches(&self) -> &PatchSet {
        &self.patches
    }

    /// Number of parameters (tied embeddings count once).
    pub fn num_parameters(&self) -> usize {
        self.weights.params().num_parameters()
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.weights.dtype()
    }

    /// The device.
    pub fn device(&self) -> &Device {
        self.weights.device()
    }
}
