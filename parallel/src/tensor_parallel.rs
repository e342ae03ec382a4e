//! Tensor parallelism as patches: the attention and MLP sites wrapped so that the family's own
//! block is built with this rank's heads or intermediate width, and the projections under
//! them split by columns (q/k/v, gate/up) or rows (o, down, then summed over ranks).

use std::sync::Arc;

use candle_core::Tensor;
use patch_core::{Build, Builder, Module, Result};
use patchwork_models::decoder::{
    Attention, AttentionArgs, DecoderConfig, LayerContext, Mlp, MlpArgs, PassContext,
};

use crate::error::{alone, other};
use crate::gather::AllGather;
use crate::layout::{Layout, Slice, Split};
use crate::tp_plan::TpPlan;

/// The plan entries that split an attention block.
const ATTENTION: [(&str, &str); 4] = [
    ("q_proj", "colwise"),
    ("k_proj", "colwise"),
    ("v_proj", "colwise"),
    ("o_proj", "rowwise"),
];

/// The plan entries that split an MLP.
const MLP: [(&str, &str); 3] = [
    ("gate_proj", "colwise"),
    ("up_proj", "colwise"),
    ("down_proj", "rowwise"),
];

/// An attention site built with this rank's query and key/value heads (where the config's
/// `base_model_tp_plan`, or transformers' plan for the family, splits its projections): the family's own
/// attention (whatever the site would build) over a config with the local head counts, its
/// q/k/v projections column-parallel and `o_proj` row-parallel
/// ([`crate::ParallelLinear`]). Built by [`crate::ParallelPlan::patches`].
pub struct TensorParallelAttention {
    inner: Box<dyn Attention>,
}

impl TensorParallelAttention {
    pub(crate) fn build_with(
        layout: &Arc<Layout>,
        b: &Builder,
        args: AttentionArgs<'_>,
    ) -> Result<Box<dyn Attention>> {
        let c = args.config;
        if !TpPlan::of(c)
            .and_then(|p| p.splits(b.path(), &ATTENTION))
            .map_err(other)?
        {
            b.describe("not split: base_model_tp_plan has no entry for its projections");
            return b.build_original(args);
        }
        let d = c.head_dim;
        let (q0, nq) = layout
            .share("num_attention_heads", c.num_attention_heads)
            .map_err(other)?;
        let (k0, nk) = layout.kv_heads(c.num_key_value_heads).map_err(other)?;
        let path = b.path();
        let column = |start: usize, len: usize, full: usize| Slice {
            split: Split::Columns,
            full: full * d,
            start: start * d,
            len: len * d,
        };
        layout.set(
            format!("{path}.q_proj"),
            column(q0, nq, c.num_attention_heads),
        );
        for name in ["k_proj", "v_proj"] {
            layout.set(
                format!("{path}.{name}"),
                column(k0, nk, c.num_key_value_heads),
            );
        }
        let o = Slice {
            split: Split::Rows,
            ..column(q0, nq, c.num_attention_heads)
        };
        layout.set(format!("{path}.o_proj"), o);
        b.describe(format!(
            "query heads {q0}..{} of {}, key/value heads {k0}..{} of {} ({})",
            q0 + nq,
            c.num_attention_heads,
            k0 + nk,
            c.num_key_value_heads,
            layout.who()
        ));
        let local = DecoderConfig {
            num_attention_heads: nq,
            num_key_value_heads: nk,
            ..c.clone()
        };
        let inner = b.build_original::<dyn Attention>(AttentionArgs {
            config: &local,
            ..args
        })?;
        replicated_under(layout, b)?;
        Ok(Box::new(Self { inner }))
    }
}

impl Build for TensorParallelAttention {
    type Slot = dyn Attention;

    /// Not buildable alone: the plan's patches carry the communicator.
    fn build(b: &Builder, _: AttentionArgs<'_>) -> Result<Box<dyn Attention>> {
        Err(alone("TensorParallelAttention", b))
    }

    fn wraps(&self) -> Option<&dyn Module> {
        Some(&*self.inner)
    }
}

impl Attention for TensorParallelAttention {
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<Tensor> {
        self.inner.forward(hidden_states, ctx)
    }
}

/// An MLP site built with this rank's share of the intermediate width (where the
/// tensor-parallel plan splits its projections: the dense MLPs, not Qwen2-MoE's shared expert,
/// in transformers' plan): the family's own MLP
/// over `intermediate_size / world`, `gate_proj`/`up_proj` column-parallel and `down_proj`
/// row-parallel. Built by [`crate::ParallelPlan::patches`].
pub struct TensorParallelMlp {
    inner: Box<dyn Mlp>,
}

impl TensorParallelMlp {
    pub(crate) fn build_with(
        layout: &Arc<Layout>,
        b: &Builder,
        args: MlpArgs<'_>,
    ) -> Result<Box<dyn Mlp>> {
        if !TpPlan::of(args.config)
            .and_then(|p| p.splits(b.path(), &MLP))
            .map_err(other)?
        {
            b.describe("not split: base_model_tp_plan has no entry for its projections");
            return b.build_original(args);
        }
        let i = args.intermediate_size;
        let (start, len) = layout.share("intermediate_size", i).map_err(other)?;
        let path = b.path();
        let column = Slice {
            split: Split::Columns,
            full: i,
            start,
            len,
        };
        layout.set(format!("{path}.gate_proj"), column);
        layout.set(format!("{path}.up_proj"), column);
        let rows = Slice {
            split: Split::Rows,
            ..column
        };
        layout.set(format!("{path}.down_proj"), rows);
        b.describe(format!(
            "intermediate {start}..{} of {i} ({})",
            start + len,
            layout.who()
        ));
        let inner = b.build_original::<dyn Mlp>(MlpArgs {
            intermediate_size: len,
            ..args
        })?;
        replicated_under(layout, b)?;
        Ok(Box::new(Self { inner }))
    }
}

impl Build for TensorParallelMlp {
    type Slot = dyn Mlp;

    /// Not buildable alone: the plan's patches carry the communicator.
    fn build(b: &Builder, _: MlpArgs<'_>) -> Result<Box<dyn Mlp>> {
        Err(alone("TensorParallelMlp", b))
    }

    fn wraps(&self) -> Option<&dyn Module> {
        Some(&*self.inner)
    }
}

impl Mlp for TensorParallelMlp {
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        self.inner.forward(x, pass)
    }
}

/// Declares every parameter under the block at `b`'s path that is not split (Qwen3's per-head
/// `q_norm`/`k_norm`) replicated with a partial gradient: the block applies it to this rank's
/// heads only, so its gradient is the sum of the ranks'.
fn replicated_under(layout: &Arc<Layout>, b: &Builder) -> Result<()> {
    let params = b.weights().params().clone();
    let prefix = format!("{}.", b.path());
    for (name, _) in params.entries() {
        if let Some(rest) = name.strip_prefix(&prefix)
            && params.shard(&name).is_none()
        {
            let gather = Arc::new(AllGather(layout.comm.clone()));
            b.weights().declare_replicated(rest, gather)?;
        }
    }
    Ok(())
}
