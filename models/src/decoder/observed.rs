//! How every slot's module is observed: the builder hands back each built module wrapped in a
//! [`patch_core::Observed`] (the slots' `Slot::observe`), which forwards to the module and
//! records its output in the pass's [`PassContext`] when the pass asks for that site. So a
//! replacement is recorded exactly as the original it replaces. Children need no forwarding
//! here: `Observed` lists the children of the module it holds.

use candle_core::{DType, Device, Tensor};
use patch_core::{Observed, ObservedSite};

use crate::decoder::attention::Attention;
use crate::decoder::capture::{PassContext, Record};
use crate::decoder::context::LayerContext;
use crate::decoder::embedding::TokenEmbedding;
use crate::decoder::layer::DecoderLayer;
use crate::decoder::mlp::Mlp;
use crate::decoder::moe::{Experts, Router, SparseMoe};
use crate::decoder::norm::Norm;
use crate::decoder::outputs::{LayerOutput, MoeOutput, RouterOutput};
use crate::decoder::positions::Positions;
use crate::decoder::projection::{Projection, StackedProjections};
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

impl Projection for Observed<dyn Projection> {
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        let y = self.inner().forward(x, pass)?;
        pass.record(self.site(), || Record::Tensor(y.clone()));
        Ok(y)
    }

    fn in_features(&self) -> usize {
        self.inner().in_features()
    }

    fn out_features(&self) -> usize {
        self.inner().out_features()
    }

    fn observed_site(&self) -> Option<&ObservedSite> {
        Some(self.site())
    }

    fn stack_with(&self, rest: &[&dyn Projection]) -> Option<Box<dyn StackedProjections>> {
        self.inner().stack_with(rest)
    }
}

impl TokenEmbedding for Observed<dyn TokenEmbedding> {
    fn forward(&self, input_ids: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        let y = self.inner().forward(input_ids, pass)?;
        pass.record(self.site(), || Record::Tensor(y.clone()));
        Ok(y)
    }

    fn table(&self) -> Option<Tensor> {
        self.inner().table()
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
}

impl SparseMoe for Observed<dyn SparseMoe> {
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<MoeOutput> {
        let out = self.inner().forward(x, ctx)?;
        ctx.pass
            .record(self.site(), || Record::Tensor(out.hidden_states.clone()));
        Ok(out)
    }
}
