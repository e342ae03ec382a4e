//! Handing a [`Weights`] handle to candle-nn code as a `VarBuilder`: every tensor it asks for
//! goes through the same source, scopes and parameter store.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::Init;

use crate::{WeightRequest, Weights};

/// Adapter from a root [`Weights`] handle to candle-nn's `SimpleBackend`.
pub(crate) struct Backend(pub(crate) Weights);

impl candle_nn::var_builder::SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let w = &self.0;
        let tensor = w
            .source()
            .get(&WeightRequest {
                name,
                shape: &s,
                init: h,
                dtype,
                device: dev,
                scopes: w.scopes(),
            })
            .map_err(candle_core::Error::wrap)?;
        w.hand_out(name, tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "tensor {name:?} asked for without a shape ({dtype:?} on {dev:?}): patchwork needs every weight's shape to check it"
        )))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.source().contains(name, self.0.scopes())
    }
}
