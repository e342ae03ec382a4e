//! The decoder body every family here shares: embedding, layers, final norm, and the forward
//! pass that derives positions, masks and rope tables once and runs the layers with them.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;
use patch_core::{Builder, Module, Result as BuildResult};

use crate::decoder::capture::PassContext;
use crate::decoder::config::{AttentionKind, DecoderConfig};
use crate::decoder::context::LayerContext;
use crate::decoder::embedding::{Embedding, EmbeddingArgs, TokenEmbedding};
use crate::decoder::kv_cache::KvCache;
use crate::decoder::layer::{DecoderLayer, DecoderLayerArgs};
use crate::decoder::norm::{Norm, NormArgs};
use crate::decoder::outputs::RouterOutput;
use crate::decoder::positions::Positions;
use crate::decoder::rotary::{RotaryArgs, RotaryEmbedding};
use crate::decoder::sites::DecoderSites;
use crate::ops::AttentionMask;
use crate::{Error, Result};

/// The routing one MoE layer produced in a forward pass.
#[derive(Clone, Debug)]
pub struct RouterRecord {
    /// Absolute index of the layer.
    pub layer: usize,
    /// Its router's output.
    pub router: RouterOutput,
}

/// One forward pass's input to the decoder body.
#[derive(Clone, Copy, Debug)]
pub struct DecoderInput<'a> {
    /// Token ids `[batch, seq]`, u32, already checked against the vocabulary.
    pub input_ids: &'a Tensor,
    /// Padding mask of these tokens, `batch * seq` bytes row-major, 1 = token, 0 = padding.
    pub attention_mask: &'a [u8],
    /// Expert indices to replay, by absolute layer index.
    pub forced_experts: &'a BTreeMap<usize, Tensor>,
    /// Whether to return the routers' outputs.
    pub output_router_logits: bool,
    /// Which hidden states to keep, by index `0..=num_hidden_layers` (see
    /// [`DecoderOutput::hidden_states`]); empty or all false for none.
    pub hidden_states: &'a [bool],
    /// What the pass records (sites, attention probabilities).
    pub pass: &'a PassContext,
}

/// What the decoder body returns.
#[derive(Clone, Debug)]
pub struct DecoderOutput {
    /// The final norm's output `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor,
    /// Each MoE layer's routing, when asked for.
    pub routers: Vec<RouterRecord>,
    /// The selected hidden states, by index (transformers' `output_hidden_states`
    /// convention): 0 the embedding output, `i` the output of layer `i - 1`, and
    /// `num_hidden_layers` the final norm's output.
    pub hidden_states: BTreeMap<usize, Tensor>,
}

/// The decoder body (transformers' `LlamaModel`, `Qwen2MoeModel`): the same structure and
/// forward pass for every family here; what differs is which sites a family builds into it.
pub struct DecoderModel {
    /// The token embedding (`[vocab, hidden]`), a site.
    pub embed_tokens: Box<dyn TokenEmbedding>,
    /// The decoder layers.
    pub layers: Vec<Box<dyn DecoderLayer>>,
    /// The final norm.
    pub norm: Box<dyn Norm>,
    /// The rotary embedding (tables computed once per pass).
    pub rotary_emb: Box<dyn RotaryEmbedding>,
    config: Arc<DecoderConfig>,
}

impl DecoderModel {
    /// Builds the body of family `S` under `b` (conventionally at `model`): the embedding,
    /// `num_hidden_layers` of `S`'s decoder layers, its final norm and its rotary embedding,
    /// in transformers' order.
    pub fn load<S: DecoderSites>(b: &Builder, config: &Arc<DecoderConfig>) -> BuildResult<Self> {
        let embed_tokens = b
            .pp("embed_tokens")
            .build::<Embedding>(EmbeddingArgs { config })?;
        let layers = (0..config.num_hidden_layers)
            .map(|layer_idx| {
                b.pp("layers")
                    .pp(layer_idx.to_string())
                    .build::<S::DecoderLayer>(DecoderLayerArgs { config, layer_idx })
            })
            .collect::<BuildResult<Vec<_>>>()?;
        let norm = b.pp("norm").build::<S::Norm>(NormArgs {
            config,
            dim: config.hidden_size,
        })?;
        let rotary_emb = b
            .pp("rotary_emb")
            .build::<S::RotaryEmbedding>(RotaryArgs { config })?;
        Ok(Self::new(
            config.clone(),
            embed_tokens,
            layers,
            norm,
            rotary_emb,
        ))
    }

    /// A body from its parts.
    pub fn new(
        config: Arc<DecoderConfig>,
        embed_tokens: Box<dyn TokenEmbedding>,
        layers: Vec<Box<dyn DecoderLayer>>,
        norm: Box<dyn Norm>,
        rotary_emb: Box<dyn RotaryEmbedding>,
    ) -> Self {
        Self {
            embed_tokens,
            layers,
            norm,
            rotary_emb,
            config,
        }
    }

    /// Calls `visit(name, module)` for its modules, in build order: `embed_tokens`, each
    /// layer (`layers.0`, ...), `norm` and `rotary_emb`.
    pub fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        visit("embed_tokens", &*self.embed_tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            visit(&format!("layers.{i}"), &**layer);
        }
        visit("norm", &*self.norm);
        visit("rotary_emb", &*self.rotary_emb);
    }

    /// The config view it was built from.
    pub fn config(&self) -> &Arc<DecoderConfig> {
        &self.config
    }

    /// Runs the body: the final hidden states `[batch, seq, hidden]` and, when asked, every
    /// MoE layer's routing and the selected hidden states. With a cache, the tokens continue
    /// the cached sequence (their positions and mask extend it) and the cache is extended.
    pub fn forward(
        &self,
        input: &DecoderInput<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<DecoderOutput> {
        let (batch, seq_len) = input.input_ids.dims2()?;
        let mask = input.attention_mask;
        let mut h = self.embed_tokens.forward(input.input_ids, input.pass)?;
        let keep = |i: usize| input.hidden_states.get(i).copied().unwrap_or(false);
        let mut hidden_states = BTreeMap::new();
        if keep(0) {
            hidden_states.insert(0, h.clone());
        }
        let dtype = h.dtype();
        let device = h.device().clone();

        let (past, positions) = match cache.as_deref_mut() {
            Some(c) => {
                if c.batch() != batch || c.layers_mut().len() != self.layers.len() {
                    return Err(Error::input(
                        "cache",
                        format!(
                            "made for {} rows and {} layers, the pass has {batch} rows and the model {} layers",
                            c.batch(),
                            c.layers_mut().len(),
                            self.layers.len()
                        ),
                    ));
                }
                let past = c.len();
                let start = c.begin(mask, seq_len)?;
                (past, Positions::from_mask(batch, seq_len, mask, &start))
            }
            None => (
                0,
                Positions::from_mask(batch, seq_len, mask, &vec![0; batch]),
            ),
        };
        let rope = self
            .rotary_emb
            .forward(&positions, dtype, &device, input.pass)?;

        // One mask per attention kind the layers use, made before the layers borrow the cache.
        let key_mask: Vec<u8> = match cache.as_deref() {
            Some(c) => (0..batch)
                .flat_map(|r| c.key_mask(r, past + seq_len).iter().copied())
                .collect(),
            None => mask.to_vec(),
        };
        let mut masks: Vec<(AttentionKind, AttentionMask)> = Vec::new();
        for i in 0..self.layers.len() {
            let kind = self.config.attention_kind(i);
            if masks.iter().any(|(k, _)| *k == kind) {
                continue;
            }
            let window = match kind {
                AttentionKind::Full => None,
                AttentionKind::Sliding { window } => Some(window),
            };
            let m = AttentionMask::new(
                batch,
                past,
                seq_len,
                window,
                key_mask.clone(),
                dtype,
                &device,
            )?;
            masks.push((kind, m));
        }

        let mut routers = Vec::new();
        let mut layer_caches = cache.as_deref_mut().map(KvCache::layers_mut);
        for (i, layer) in self.layers.iter().enumerate() {
            let kind = self.config.attention_kind(i);
            let Some((_, attention_mask)) = masks.iter().find(|(k, _)| *k == kind) else {
                return Err(Error::input(
                    "attention mask",
                    format!("none made for layer {i}"),
                ));
            };
            let mut ctx = LayerContext {
                layer_idx: i,
                rope: &rope,
                mask: attention_mask,
                cache: layer_caches.as_deref_mut().map(|c| &mut c[i]),
                forced_experts: input.forced_experts.get(&i),
                sliding_window: match kind {
                    AttentionKind::Sliding { window } => Some(window),
                    AttentionKind::Full => None,
                },
                pass: input.pass,
            };
            let out = layer.forward(&h, &mut ctx)?;
            h = out.hidden_states;
            // The last layer's output is not kept: transformers' last hidden state is normed.
            if i + 1 < self.layers.len() && keep(i + 1) {
                hidden_states.insert(i + 1, h.clone());
            }
            if input.output_router_logits
                && let Some(router) = out.router
            {
                routers.push(RouterRecord { layer: i, router });
            }
        }
        if let Some(c) = cache {
            c.commit(seq_len);
        }
        let h = self.norm.forward(&h, input.pass)?;
        if keep(self.layers.len()) {
            hidden_states.insert(self.layers.len(), h.clone());
        }
        Ok(DecoderOutput {
            last_hidden_state: h,
            routers,
            hidden_states,
        })
    }
}
