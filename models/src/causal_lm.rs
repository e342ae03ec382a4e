//! `CausalLM`: a decoder body with its output head, what `from_pretrained` returns; batched
//! forward with padding masks and a KV cache, router outputs, the training loss, gradients by
//! checkpoint key, explain, and what saving needs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use patch_checkpoint::{
    SaveOptions, SaveReport, Transform, Weights, checkpoint_conversion_mapping_for,
    to_checkpoint_layout,
};
use patch_core::{BuildReport, Builder, Explain, Module, PatchSet};

use crate::decoder::linear::{Linear, projection};
use crate::decoder::{
    DecoderConfig, DecoderInput, DecoderLayer, DecoderModel, FeedForward, FeedForwardKind, KvCache,
    PassContext, Recorders, Records, RouterRecord, Selection,
};
use crate::family::ModelFamily;
use crate::generation::GenerationDefaults;
use crate::implementations::{AttentionImplementation, ExpertsImplementation, Implementations};
use crate::loss::{causal_lm_loss, integer_values, load_balancing_loss};
use crate::{Error, Result};

/// Which positions get logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogitsMode {
    /// Every position: `[batch, seq, vocab]`.
    #[default]
    All,
    /// The last position of each row only: `[batch, 1, vocab]` (what generation needs; the
    /// output head then runs on one position instead of all).
    Last,
    /// None (the pass only fills the cache or records routing).
    None,
}

/// Options of [`CausalLM::forward_with`].
#[derive(Clone, Debug, Default)]
pub struct ForwardOptions {
    /// Which positions get logits.
    pub logits: LogitsMode,
    /// Return each MoE layer's router output, and the load-balancing loss (transformers'
    /// `output_router_logits`); `None` takes the config's `output_router_logits` (false when
    /// absent).
    pub output_router_logits: Option<bool>,
    /// Expert ids `[batch * seq, top_k]` (any integer dtype) to force, by absolute MoE layer
    /// index (replaying a recorded routing); an id of -1 lets that token choose freely. Empty
    /// to route normally.
    pub forced_experts: BTreeMap<usize, Tensor>,
    /// Labels `[batch, seq]` (any integer dtype; -100 ignores a position): the pass then
    /// returns the causal-LM loss ([`ForwardOutput::loss`]). Needs [`LogitsMode::All`].
    pub labels: Option<Tensor>,
    /// Which hidden states to return ([`ForwardOutput::hidden_states`]), by index
    /// `0..=num_hidden_layers` (negatives count from the end).
    pub output_hidden_states: Selection,
    /// Which layers' attention probabilities to return ([`ForwardOutput::attentions`]), by
    /// layer index (negatives count from the end). Those layers attend on the eager path.
    pub output_attentions: Selection,
    /// Which sites' outputs to record ([`ForwardOutput::records`]), by site name or regex.
    pub recorders: Recorders,
}

/// What [`CausalLM::forward_with`] returns.
#[derive(Clone, Debug)]
pub struct ForwardOutput {
    /// Logits in float32 (shape per [`LogitsMode`]); `None` with [`LogitsMode::None`].
    pub logits: Option<Tensor>,
    /// Each MoE layer's routing, in layer order, when asked for.
    pub router_logits: Vec<RouterRecord>,
    /// With labels: the mean shifted cross-entropy (float32 `[]`), plus
    /// `router_aux_loss_coef * aux_loss` when router outputs are returned (as
    /// `Qwen2MoeForCausalLM.forward` computes it). Differentiable when the model is trainable.
    pub loss: Option<Tensor>,
    /// For MoE models returning router outputs: the load-balancing loss (float32 `[]`,
    /// transformers' `load_balancing_loss_func`, padding-aware with an attention mask).
    pub aux_loss: Option<Tensor>,
    /// The selected hidden states `[batch, seq, hidden]`, by index: 0 the embedding output,
    /// `i` the output of layer `i - 1`, `num_hidden_layers` the final norm's output
    /// (transformers' `output_hidden_states` convention).
    pub hidden_states: BTreeMap<usize, Tensor>,
    /// The selected layers' post-softmax attention probabilities `[batch, heads, seq,
    /// kv_len]`, masked as the pass masks them, by layer index.
    pub attentions: BTreeMap<usize, Tensor>,
    /// The recorded sites' outputs, by module path, typed by slot.
    pub records: Records,
}

/// A causal language model: a [`DecoderModel`] body and an output head, plus what it was
/// built from (config, weights record, build report, patches) for explain and saving.
pub struct CausalLM {
    /// The decoder body (`model.*` weights).
    pub model: DecoderModel,
    /// The output head (`lm_head.weight`, or the embedding when tied).
    pub lm_head: Linear,
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
    /// [`Builder`]): the body under `model`, and `lm_head` unless the embeddings are tied, in
    /// which case `lm_head.weight` is never asked for (and never saved).
    pub fn build(b: &Builder, config: DecoderConfig, family: &'static ModelFamily) -> Result<Self> {
        let config = Arc::new(config);
        // What the registry says this config's checkpoints are converted with: saving reverses
        // it for tensors that did not come from a checkpoint (a model built from its config).
        let transforms = checkpoint_conversion_mapping_for(&config.json)?
            .map(|(_, t)| t)
            .unwrap_or_default();
        let model = (family.build_model)(&b.pp("model"), &config)?;
        let lm_head = if config.tie_word_embeddings {
            b.weights()
                .tie("lm_head.weight", "model.embed_tokens.weight");
            Linear::new(model.embed_tokens.embeddings().clone(), None)
        } else {
            projection(
                b,
                &config,
                "lm_head",
                config.hidden_size,
                config.vocab_size,
                false,
            )?
        };
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

    /// The trainable variables, by parameter name (`model.layers.0.self_attn.q_proj.weight`,
    /// `model.layers.0.mlp.experts.gate_up_proj`, ...), to hand to an optimiser
    /// (`AdamW::new(model.vars()?.all_vars(), ..)`); an error unless loaded with
    /// [`LoadOptions::trainable`](crate::LoadOptions::trainable).
    pub fn vars(&self) -> Result<&VarMap> {
        self.vars
            .as_ref()
            .ok_or(Error::NotTrainable { what: "vars" })
    }

    /// Every gradient of `grads` (what `loss.backward()` returned), keyed by the checkpoint
    /// tensor it belongs to and in that tensor's layout, float32: the reverse transforms apply
    /// to gradients as saving applies them to weights (a stacked-experts gradient split per
    /// expert, a fused q/k/v gradient into three), and a tied head counts once, through the
    /// embedding it shares. A parameter the loss does not depend on gets zeros.
    pub fn gradients(&self, grads: &GradStore) -> Result<BTreeMap<String, Tensor>> {
        if !self.weights.is_trainable() {
            return Err(Error::NotTrainable { what: "gradients" });
        }
        Ok(to_checkpoint_layout(
            &self.weights,
            &self.transforms,
            |_, param| {
                Ok(match grads.get(param) {
                    Some(g) => g.to_dtype(DType::F32)?,
                    None => param.zeros_like()?.to_dtype(DType::F32)?,
                })
            },
        )?)
    }

    /// Writes the config and weights to `dir` in the checkpoint layout transformers reads:
    /// every tensor goes back under its original key through the reverse of the transforms
    /// that produced it (stacked experts split per expert, a replacement's fused q/k/v split
    /// into three), tied heads left out, sharded above `options.max_shard_size`.
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<std::path::Path>,
        options: &SaveOptions,
    ) -> Result<SaveReport> {
        Ok(patch_checkpoint::save_pretrained(
            dir,
            self.config_json(),
            &self.weights,
            &self.transforms,
            options,
        )?)
    }

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

    /// How its family's sites resolve against the patches it was built with, and what was
    /// built at each path.
    pub fn explain(&self) -> ModelExplain {
        ModelExplain {
            model_type: self.family.model_type,
            architecture: self.family.architecture,
            explain: self.patches.explain(self.family.sites),
            report: Some(self.report.clone()),
            implementations: Some((
                self.implementations.attention().name.clone(),
                self.implementations.experts().name.clone(),
            )),
        }
    }

    /// A KV cache for `batch` rows and `capacity` positions (prompt plus new tokens),
    /// allocated on first use and then written in place. `capacity` is checked against
    /// [`CausalLM::max_positions`] and the cache's size against the memory available.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        self.check_positions(
            &format!("a KV cache of {capacity} positions"),
            Some(capacity),
        )?;
        let c = self.config();
        let per_position = (self.model.layers.len() as u128)
            * (c.num_key_value_heads as u128)
            * (c.head_dim as u128)
            * 2
            * self.dtype().size_in_bytes() as u128
            + 1;
        patch_checkpoint::memory::check(
            (batch as u128) * (capacity as u128) * per_position,
            || format!("a KV cache of {batch} rows x {capacity} positions"),
            "generate fewer tokens, or fewer rows at once",
        )?;
        KvCache::new(self.model.layers.len(), batch, capacity)
    }

    /// Logits (float32 `[batch, seq, vocab]`) for `input_ids` (`[batch, seq]`, u32 or i64),
    /// with an optional `attention_mask` (`[batch, seq]`, 1 = token, 0 = padding; left or
    /// right padding). Positions come from the mask.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let out = self.forward_with(input_ids, attention_mask, None, &ForwardOptions::default())?;
        out.logits
            .ok_or_else(|| Error::input("logits", "not computed"))
    }

    /// The full forward pass. With `cache`, the tokens continue the cached sequence:
    /// `attention_mask` covers the new tokens only (the cache remembers the earlier ones), and
    /// the cache is extended in place.
    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        options: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        let ids = self.check_input_ids(input_ids)?;
        let (batch, seq) = ids.dims2()?;
        let past = cache.as_deref().map_or(0, KvCache::len);
        let _span = tracing::debug_span!("forward", batch, seq, past).entered();
        self.check_positions(
            &format!("a pass of {seq} tokens after {past} cached positions"),
            past.checked_add(seq),
        )?;
        self.check_pass_memory(batch, seq, options)?;
        let mask = match attention_mask {
            Some(m) => check_mask(m, batch, seq)?,
            None => vec![1u8; batch * seq],
        };
        self.check_forced_experts(&options.forced_experts, batch * seq)?;
        if options.labels.is_some() && options.logits != LogitsMode::All {
            return Err(Error::input(
                "labels",
                format!(
                    "the loss needs logits at every position, but the pass computes {:?}",
                    options.logits
                ),
            ));
        }
        let moe = self.config().moe.as_ref();
        let output_router_logits = options
            .output_router_logits
            .unwrap_or(moe.is_some_and(|m| m.output_router_logits));
        let layers = self.model.layers.len();
        let hidden_states = options
            .output_hidden_states
            .resolve("output_hidden_states", layers + 1)?;
        let attentions = options
            .output_attentions
            .resolve("output_attentions", layers)?;
        let pass = PassContext::new(
            &self.report,
            &options.recorders,
            attentions,
            &self.implementations,
        );
        let input = DecoderInput {
            input_ids: &ids,
            attention_mask: &mask,
            forced_experts: &options.forced_experts,
            output_router_logits,
            hidden_states: &hidden_states,
            pass: &pass,
        };
        let out = self.model.forward(&input, cache)?;
        let (hidden, router_logits) = (out.last_hidden_state, out.routers);
        let hidden = match options.logits {
            LogitsMode::All => Some(hidden),
            LogitsMode::Last => Some(hidden.narrow(1, seq - 1, 1)?),
            LogitsMode::None => None,
        };
        let logits = match hidden {
            Some(h) => Some(self.lm_head.forward(&h)?.to_dtype(DType::F32)?),
            None => None,
        };
        let aux_loss = match moe {
            Some(m) if output_router_logits && !router_logits.is_empty() => {
                let layers: Vec<&Tensor> = router_logits.iter().map(|r| &r.router.logits).collect();
                let mask = attention_mask.map(|_| mask.as_slice());
                Some(load_balancing_loss(
                    &layers,
                    m.num_experts,
                    m.num_experts_per_tok,
                    mask,
                )?)
            }
            _ => None,
        };
        let loss = match (&options.labels, &logits) {
            (Some(labels), Some(logits)) => {
                let loss = causal_lm_loss(logits, labels)?;
                Some(match (&aux_loss, moe) {
                    (Some(aux), Some(m)) => (loss + (aux * m.router_aux_loss_coef)?)?,
                    _ => loss,
                })
            }
            _ => None,
        };
        let (records, attentions) = pass.into_captured();
        Ok(ForwardOutput {
            logits,
            router_logits,
            loss,
            aux_loss,
            hidden_states: out.hidden_states,
            attentions,
            records,
        })
    }

    /// Where NaN or infinite values in a pass over `input_ids` (`[batch, seq]`) come from: the
    /// first weight holding one, else the first hidden state (by
    /// [`ForwardOptions::output_hidden_states`]'s index) holding one, else the output head.
    /// What [`Error::NonFinite`] says; slow (it scans every weight and reruns the pass).
    pub fn diagnose_non_finite(&self, input_ids: &Tensor) -> String {
        let first_bad = |t: &Tensor| -> Option<usize> {
            let values = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .ok()?;
            values.iter().position(|v| !v.is_finite())
        };
        let mut params = self.weights.params().snapshot();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in &params {
            if let Some(i) = first_bad(t) {
                return format!("weight {name:?} holds a NaN or infinite value (element {i})");
            }
        }
        let options = ForwardOptions {
            logits: LogitsMode::None,
            output_hidden_states: Selection::All,
            ..ForwardOptions::default()
        };
        match self.forward_with(input_ids, None, None, &options) {
            Ok(out) => {
                for (i, h) in &out.hidden_states {
                    if first_bad(h).is_some() {
                        let what = match *i {
                            0 => "the embedding output".to_string(),
                            i if i == self.model.layers.len() => {
                                "the final norm's output".to_string()
                            }
                            i => format!("the output of layer {}", i - 1),
                        };
                        return format!(
                            "the weights are finite; hidden state {i} ({what}) is the first to hold NaN or infinity"
                        );
                    }
                }
                "the weights and hidden states are finite; the output head overflowed".into()
            }
            Err(e) => format!("the weights are finite; rerunning the pass failed: {e}"),
        }
    }

    /// Checks that the activations of a pass of `batch x seq` tokens fit in memory: about
    /// float32 values per token for the logits asked for, the residual stream and norms, the
    /// widest feed-forward's three projections, and queries, keys and values (attention itself
    /// is linear in the tokens on the fused path and works in blocks on the eager one).
    fn check_pass_memory(&self, batch: usize, seq: usize, options: &ForwardOptions) -> Result<()> {
        let c = self.config();
        let widest = c
            .moe
            .as_ref()
            .map_or(0, |m| {
                (m.moe_intermediate_size * m.num_experts_per_tok)
                    .max(m.shared_expert_intermediate_size)
            })
            .max(c.intermediate_size) as u128;
        let logits = match options.logits {
            LogitsMode::All => c.vocab_size as u128,
            LogitsMode::Last | LogitsMode::None => 0,
        };
        let attention = ((c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim) as u128;
        let per_token = logits + 4 * c.hidden_size as u128 + 3 * widest + 2 * attention;
        let tokens = (batch as u128) * (seq as u128);
        patch_checkpoint::memory::check(
            tokens.saturating_mul(per_token).saturating_mul(4),
            || format!("a forward pass of {batch} x {seq} tokens"),
            if logits > 0 {
                "pass fewer tokens, or ask for the last position's logits only (LogitsMode::Last)"
            } else {
                "pass fewer tokens"
            },
        )?;
        Ok(())
    }

    /// Checks forced experts before the pass: each names an MoE layer of this model and holds
    /// `[tokens, top_k]` integers, each -1 or an expert id; errors name the layer and position.
    fn check_forced_experts(&self, forced: &BTreeMap<usize, Tensor>, tokens: usize) -> Result<()> {
        if forced.is_empty() {
            return Ok(());
        }
        let c = self.config();
        let moe = c.moe()?;
        let sparse: Vec<usize> = (0..c.num_hidden_layers)
            .filter(|&i| c.feed_forward_kind(i) == FeedForwardKind::Sparse)
            .collect();
        let (k, experts) = (moe.num_experts_per_tok, moe.num_experts);
        for (&layer, ids) in forced {
            let name = format!("forced_experts[{layer}]");
            if !sparse.contains(&layer) {
                return Err(Error::input(
                    name,
                    format!(
                        "layer {layer} is not an MoE layer of this model (MoE layers: {sparse:?})"
                    ),
                ));
            }
            if ids.dims() != [tokens, k] {
                return Err(Error::input(
                    name,
                    format!(
                        "shape {:?}: this pass routes {tokens} tokens to {k} experts each ([{tokens}, {k}])",
                        ids.dims()
                    ),
                ));
            }
            let values = integer_values(&name, ids)?;
            if let Some((i, e)) = values
                .iter()
                .enumerate()
                .find(|&(_, &e)| e < -1 || e >= experts as i64)
            {
                return Err(Error::input(
                    name,
                    format!(
                        "expert {e} at token {}, choice {}: expected -1 (route freely) or an expert below {experts}",
                        i / k,
                        i % k
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `input_ids` as a u32 tensor on the model's device, after checking its shape, dtype and
    /// that every id is below the vocabulary size.
    pub fn check_input_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2().map_err(|_| {
            Error::input(
                "input_ids",
                format!("expected shape [batch, seq], found {:?}", input_ids.dims()),
            )
        })?;
        if batch == 0 || seq == 0 {
            return Err(Error::input(
                "input_ids",
                format!("empty batch {:?}", input_ids.dims()),
            ));
        }
        let values: Vec<i64> = match input_ids.dtype() {
            DType::U32 | DType::U8 | DType::I64 | DType::I32 | DType::I16 => {
                input_ids.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?
            }
            other => {
                return Err(Error::input(
                    "input_ids",
                    format!("expected integer token ids (u32 or i64), found {other:?}"),
                ));
            }
        };
        let vocab = self.config().vocab_size;
        if let Some((i, &token)) = values
            .iter()
            .enumerate()
            .find(|(_, t)| **t < 0 || **t >= vocab as i64)
        {
            return Err(Error::TokenOutOfRange {
                input: "input_ids".into(),
                row: i / seq,
                col: i % seq,
                token,
                vocab_size: vocab,
            });
        }
        let ids: Vec<u32> = values.into_iter().map(|t| t as u32).collect();
        Ok(Tensor::from_vec(ids, (batch, seq), self.device())?)
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

/// The mask as bytes, after checking its shape and that it holds only 0 and 1.
fn check_mask(mask: &Tensor, batch: usize, seq: usize) -> Result<Vec<u8>> {
    if mask.dims() != [batch, seq] {
        return Err(Error::input(
            "attention_mask",
            format!(
                "expected shape [{batch}, {seq}] like input_ids, found {:?}",
                mask.dims()
            ),
        ));
    }
    let values: Vec<f64> = mask.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v == 0.0 || v == 1.0 {
                Ok(v as u8)
            } else {
                Err(Error::input(
                    "attention_mask",
                    format!(
                        "value {v} at [{}, {}]: expected 1 (token) or 0 (padding)",
                        i / seq,
                        i % seq
                    ),
                ))
            }
        })
        .collect()
}

/// The answer to "is my patch applied?" for a model or a model type: how the family's sites
/// resolve (patterns that matched nothing, matches skipped and why) and, for a built model,
/// what was built at each path.
#[derive(Clone, Debug)]
pub struct ModelExplain {
    /// The family's `model_type`.
    pub model_type: &'static str,
    /// Its causal-LM class name.
    pub architecture: &'static str,
    /// How the family's sites resolve.
    pub explain: Explain,
    /// What was built at each path (built models only).
    pub report: Option<BuildReport>,
    /// The attention and experts implementations the built model computes with (built models
    /// only): what every attention site that attends through `decoder::attend` and every
    /// stacked-experts site runs.
    pub implementations: Option<(String, String)>,
}

impl fmt::Display for ModelExplain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model_type {} ({})", self.model_type, self.architecture)?;
        write!(f, "{}", self.explain)?;
        if let Some(report) = &self.report {
            writeln!(f)?;
            write!(f, "built: {report}")?;
        }
        if let Some((attention, experts)) = &self.implementations {
            writeln!(f)?;
            writeln!(
                f,
                "implementations: attention {attention:?} (every Attention site attending through decoder::attend)"
            )?;
            let moe = self
                .report
                .as_ref()
                .is_some_and(|r| r.sites().iter().any(|s| s.slot == "Experts"));
            if moe {
                writeln!(
                    f,
                    "                 experts {experts:?} (every Experts site over stacked weights)"
                )?;
            }
        }
        Ok(())
    }
}
