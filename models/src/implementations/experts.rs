//! Routed-experts implementations: the typed signature, the built-ins and the registry.

use std::sync::{Arc, OnceLock};

use candle_core::Tensor;

use super::named::Named;
use crate::Result;
use crate::decoder::HiddenAct;

/// What a routed-experts implementation computes on: the tokens, their routing, and the
/// stacked expert weights.
#[derive(Clone, Copy, Debug)]
pub struct ExpertsInput<'a> {
    /// Tokens `[tokens, hidden]`.
    pub x: &'a Tensor,
    /// Chosen experts `[tokens, top_k]`.
    pub indices: &'a Tensor,
    /// Their routing weights `[tokens, top_k]`.
    pub weights: &'a Tensor,
    /// Stacked gate and up projections `[E, 2I, H]` (gate rows first).
    pub gate_up: &'a Tensor,
    /// Stacked down projections `[E, H, I]`.
    pub down: &'a Tensor,
    /// The gate's activation.
    pub act: HiddenAct,
}

/// A routed-experts implementation's function: returns `[tokens, hidden]`.
pub type ExpertsFn = fn(&ExpertsInput<'_>) -> candle_core::Result<Tensor>;

/// A named routed-experts implementation.
#[derive(Clone, Debug)]
pub struct ExpertsImplementation {
    /// Its name (`"grouped_mm"`).
    pub name: String,
    /// Whether it computes on candle's ops so gradients flow (otherwise a pass tracking
    /// gradients uses `"eager"`).
    pub supports_gradients: bool,
    /// The function.
    pub function: ExpertsFn,
}

impl ExpertsImplementation {
    /// An implementation named `name` computing with `function` (no gradients: see
    /// [`with_gradients`](Self::with_gradients)).
    pub fn new(name: impl Into<String>, function: ExpertsFn) -> Self {
        Self {
            name: name.into(),
            supports_gradients: false,
            function,
        }
    }

    /// This implementation declared to support gradients.
    pub fn with_gradients(mut self, yes: bool) -> Self {
        self.supports_gradients = yes;
        self
    }
}

/// A link-time experts implementation (what `#[experts_implementation]` submits).
pub struct ExpertsImplementationEntry(pub fn() -> ExpertsImplementation);

inventory::collect!(ExpertsImplementationEntry);

fn grouped_mm_fn(input: &ExpertsInput<'_>) -> candle_core::Result<Tensor> {
    crate::ops::routed_experts(
        input.x,
        input.gate_up,
        input.down,
        input.indices,
        input.weights,
        input.act,
    )
}

fn eager_fn(input: &ExpertsInput<'_>) -> candle_core::Result<Tensor> {
    crate::ops::experts_per_expert_loop(
        input.x,
        input.gate_up,
        input.down,
        input.indices,
        input.weights,
        input.act,
    )
}

/// `"eager"`: each expert in turn over its tokens, on candle's ops (differentiable).
pub(crate) fn eager() -> Arc<ExpertsImplementation> {
    static EAGER: OnceLock<Arc<ExpertsImplementation>> = OnceLock::new();
    EAGER
        .get_or_init(|| {
            Arc::new(ExpertsImplementation::new("eager", eager_fn).with_gradients(true))
        })
        .clone()
}

/// `"grouped_mm"`: grouped dispatch on the CPU kernels (candle's ops elsewhere).
pub(crate) fn grouped_mm() -> Arc<ExpertsImplementation> {
    static GROUPED: OnceLock<Arc<ExpertsImplementation>> = OnceLock::new();
    GROUPED
        .get_or_init(|| Arc::new(ExpertsImplementation::new("grouped_mm", grouped_mm_fn)))
        .clone()
}

/// The global experts implementations: built-ins, then link-time entries.
pub(crate) fn global() -> &'static Named<ExpertsImplementation> {
    static GLOBAL: OnceLock<Named<ExpertsImplementation>> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let mut entries = vec![
            ("eager".to_string(), eager()),
            ("grouped_mm".to_string(), grouped_mm()),
        ];
        for entry in inventory::iter::<ExpertsImplementationEntry> {
            let imp = (entry.0)();
            entries.push((imp.name.clone(), Arc::new(imp)));
        }
        Named::new("experts_implementation", entries)
    })
}

/// Registers `implementation` for every model loaded from now on (transformers'
/// `ExpertsInterface.register`); an error if its name is taken and `overwrite` is false.
pub fn register_experts_implementation(
    implementation: ExpertsImplementation,
    overwrite: bool,
) -> Result<()> {
    let name = implementation.name.clone();
    global().register(&name, Arc::new(implementation), overwrite)
}

/// The implementation `selected` for a pass: `"eager"` instead when the pass tracks
/// gradients and `selected` does not support them.
pub(crate) fn for_pass(
    selected: &Arc<ExpertsImplementation>,
    tracks_gradients: bool,
) -> Arc<ExpertsImplementation> {
    if tracks_gradients && !selected.supports_gradients {
        eager()
    } else {
        selected.clone()
    }
}
