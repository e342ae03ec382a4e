//! How every slot's module is observed: the builder hands back each built module wrapped in a
//! [`patch_core::Observed`] (the slots' `Slot::observe`), which forwards to the module and
//! records its output in the pass's [`PassContext`] when the pass asks for that site. So a
//! replacement is recorded exactly as the original it replaces.

use candle_core::{DType, Device, Tensor};
use patch_core::Observed;

use crate::decoder::attention::Attention;
use crate::decoder::capture::{PassContext, Record};
use crate::decoder::context::LayerContext;
use crate::decoder::layer::{DecoderLayer, FeedForward};
use crate::decoder::mlp::Mlp;
use crate::decoder::moe::{Experts, Router, SparseMoe, StackedWeights};
use crate::decoder::norm::Norm;
use crate::decoder::outputs::{LayerOutput, MoeOutput, RouterOutput};
use crate::decoder::positions::Positions;
use crate::decoder::rope::RopeTables;
use crate::decoder::rotary::RotaryEmbedding;

impl Norm for Observed<dyn Norm> {
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        let y = self.inner().forward(x, pass)?;
        pass.record(self.site(), || Record::Tensor(y.clone()));
        Ok(y)
    }
}

impl Mlp for Observed<dyn Mlp> {
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        let y = self.inner().forward(x, pass)?;
        pass.record(self.site(), || Record::Tensor(y.clone()));
        Ok(y)
    }
}

impl RotaryEmbedding for Observed<dyn RotaryEmbedding> {
    fn forward(
        &self,
        positions: &Positions,
        dtype: DType,
        device: &Device,
        pass: &PassContext,
    ) -> candle_core::Result<RopeTables> {
        let tables = self.inner().forward(positions, dtype, device, pass)?;
        pass.record(self.site(), || Record::Rope(tables.clone()));
        Ok(tables)
    }
}

impl Attention for Observed<dyn Attention> {
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<Tensor> {
        let y = self.inner().forward(hidden_states, ctx)?;
        ctx.pass.record(self.site(), || Record::Tensor(y.clone()));
        Ok(y)
    }

    fn q_norm(&self) -> Option<&dyn Norm> {
        self.inner().q_norm()
    }

    fn k_norm(&self) -> Option<&dyn Norm> {
        self.inner().k_norm()
    }
}

impl DecoderLayer for Observed<dyn DecoderLayer> {
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<LayerOutput> {
        let out = self.inner().forward(hidden_states, ctx)?;
        ctx.pass
            .record(self.site(), || Record::Tensor(out.hidden_states.clone()));
        Ok(out)
    }

    fn self_attn(&self) -> Option<&dyn Attention> {
        self.inner().self_attn()
    }

    fn mlp(&self) -> Option<&FeedForward> {
        self.inner().mlp()
    }

    fn input_layernorm(&self) -> Option<&dyn Norm> {
        self.inner().input_layernorm()
    }

    fn post_attention_layernorm(&self) -> Option<&dyn Norm> {
        self.inner().post_attention_layernorm()
    }
}

impl Router for Observed<dyn Router> {
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput> {
        let out = self.inner().forward(x, ctx)?;
        ctx.pass.record(self.site(), || Record::Router(out.clone()));
        Ok(out)
    }
}

impl Experts for Observed<dyn Experts> {
    fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
        pass: &PassContext,
    ) -> candle_core::Result<Tensor> {
        let y = self.inner().forward(x, indices, weights, pass)?;
        pass.record(self.site(), || Record::Tensor(y.clone()));
        Ok(y)
    }

    fn stacked_weights(&self) -> Option<StackedWeights<'_>> {
        self.inner().stacked_weights()
    }
}

impl SparseMoe for Observed<dyn SparseMoe> {
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<MoeOutput> {
        let out = self.inner().forward(x, ctx)?;
        ctx.pass
            .record(self.site(), || Record::Tensor(out.hidden_states.clone()));
        Ok(out)
    }

    fn shared_expert(&self) -> Option<&dyn Mlp> {
        self.inner().shared_expert()
    }

    fn gate(&self) -> Option<&dyn Router> {
        self.inner().gate()
    }

    fn experts(&self) -> Option<&dyn Experts> {
        self.inner().experts()
    }
}
