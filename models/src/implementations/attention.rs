//! Attention implementations: the typed signature, the built-ins and the registry.

use std::sync::{Arc, OnceLock};

use candle_core::Tensor;

use super::named::Named;
use crate::Result;
use crate::ops::{AttentionMask, KeyValues};

/// What an attention implementation computes on: one layer's queries, keys and values after
/// the rotary embedding, its mask, and what is asked of it.
#[derive(Clone, Copy, Debug)]
pub struct AttentionInput<'a> {
    /// Queries `[batch, seq, heads, head_dim]`.
    pub q: &'a Tensor,
    /// Keys and values: this layer's cache buffers read in place (`[batch, kv_heads,
    /// capacity, head_dim]`, the first `len` positions filled), or this pass's own.
    pub kv: KeyValues<'a>,
    /// Which keys each query sees (causal, padding and window); [`AttentionMask::bias`] gives
    /// the additive bias `[batch, 1, seq, kv.len]` for code that adds it to scores.
    pub mask: &'a AttentionMask,
    /// The scale of the scores (`head_dim^-0.5`).
    pub scale: f64,
    /// The layer's sliding window, if it has one (already in `mask`).
    pub sliding_window: Option<usize>,
    /// Whether the post-softmax probabilities are wanted.
    pub want_weights: bool,
    /// The layer.
    pub layer_idx: usize,
}

/// What an attention implementation returns.
#[derive(Clone, Debug)]
pub struct AttentionOutput {
    /// `[batch, seq, heads * v_head_dim]`, ready for the output projection.
    pub output: Tensor,
    /// The probabilities `[batch, heads, seq, kv.len]`, when asked for and computed.
    pub weights: Option<Tensor>,
}

/// An attention implementation's function.
pub type AttentionFn = fn(&AttentionInput<'_>) -> candle_core::Result<AttentionOutput>;

/// A named attention implementation.
#[derive(Clone, Debug)]
pub struct AttentionImplementation {
    /// Its name (`"sdpa"`).
    pub name: String,
    /// Whether it computes on candle's ops so gradients flow (otherwise a pass tracking
    /// gradients uses `"eager"`).
    pub supports_gradients: bool,
    /// Whether it returns probabilities when asked (otherwise a pass asking for them uses
    /// `"eager"` for those layers).
    pub supports_weights: bool,
    /// The function.
    pub function: AttentionFn,
}

impl AttentionImplementation {
    /// An implementation named `name` computing with `function` (no gradients, no
    /// probabilities: see [`with_gradients`](Self::with_gradients),
    /// [`with_weights`](Self::with_weights)).
    pub fn new(name: impl Into<String>, function: AttentionFn) -> Self {
        Self {
            name: name.into(),
            supports_gradients: false,
            supports_weights: false,
            function,
        }
    }

    /// This implementation declared to support gradients (it computes on candle's ops).
    pub fn with_gradients(mut self, yes: bool) -> Self {
        self.supports_gradients = yes;
        self
    }

    /// This implementation declared to return probabilities when asked.
    pub fn with_weights(mut self, yes: bool) -> Self {
        self.supports_weights = yes;
        self
    }
}

/// A link-time attention implementation (what `#[attention_implementation]` submits).
pub struct AttentionImplementationEntry(pub fn() -> AttentionImplementation);

inventory::collect!(AttentionImplementationEntry);

fn eager_fn(input: &AttentionInput<'_>) -> candle_core::Result<AttentionOutput> {
    let (b, t, heads, _) = input.q.dims4()?;
    let k = input.kv.keys.narrow(2, 0, input.kv.len)?;
    let v = input.kv.values.narrow(2, 0, input.kv.len)?;
    let (y, weights) = crate::ops::eager_attention(
        &input.q.transpose(1, 2)?,
        &k,
        &v,
        Some(input.mask),
        input.scale,
        input.want_weights,
    )?;
    let vd = v.dim(3)?;
    Ok(AttentionOutput {
        output: y.transpose(1, 2)?.reshape((b, t, heads * vd))?,
        weights,
    })
}

fn sdpa_fn(input: &AttentionInput<'_>) -> candle_core::Result<AttentionOutput> {
    let (output, weights) =
        crate::ops::attention(input.q, &input.kv, Some(input.mask), input.scale, false)?;
    Ok(AttentionOutput { output, weights })
}

/// `"eager"`: candle's ops, differentiable, with probabilities.
pub(crate) fn eager() -> Arc<AttentionImplementation> {
    static EAGER: OnceLock<Arc<AttentionImplementation>> = OnceLock::new();
    EAGER
        .get_or_init(|| {
            Arc::new(
                AttentionImplementation::new("eager", eager_fn)
                    .with_gradients(true)
                    .with_weights(true),
            )
        })
        .clone()
}

/// `"sdpa"`: the fused CPU kernel reading the cache in place (candle's ops elsewhere).
pub(crate) fn sdpa() -> Arc<AttentionImplementation> {
    static SDPA: OnceLock<Arc<AttentionImplementation>> = OnceLock::new();
    SDPA.get_or_init(|| Arc::new(AttentionImplementation::new("sdpa", sdpa_fn)))
        .clone()
}

/// The global attention implementations: built-ins, then link-time entries.
pub(crate) fn global() -> &'static Named<AttentionImplementation> {
    static GLOBAL: OnceLock<Named<AttentionImplementation>> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let mut entries = vec![("eager".to_string(), eager()), ("sdpa".to_string(), sdpa())];
        for entry in inventory::iter::<AttentionImplementationEntry> {
            let imp = (entry.0)();
            entries.push((imp.name.clone(), Arc::new(imp)));
        }
        Named::new("attn_implementation", entries)
    })
}

/// Registers `implementation` for every model loaded from now on (transformers'
/// `AttentionInterface.register`); an error if its name is taken and `overwrite` is false.
/// For one model only, see
/// [`CausalLM::register_attention_implementation`](crate::CausalLM::register_attention_implementation).
pub fn register_attention_implementation(
    implementation: AttentionImplementation,
    overwrite: bool,
) -> Result<()> {
    let name = implementation.name.clone();
    global().register(&name, Arc::new(implementation), overwrite)
}

/// The implementation `selected` for a pass: `"eager"` instead when the pass tracks
/// gradients and `selected` does not support them, or wants probabilities it does not return.
pub(crate) fn for_pass(
    selected: &Arc<AttentionImplementation>,
    tracks_gradients: bool,
    want_weights: bool,
) -> Arc<AttentionImplementation> {
    if (tracks_gradients && !selected.supports_gradients)
        || (want_weights && !selected.supports_weights)
    {
        eager()
    } else {
        selected.clone()
    }
}
