//! Weights handed out without being kept in the state dict: for modules that store them in
//! another form (quantized blocks), so the float values are freed once converted. The state
//! dict records each request instead ([`crate::ParamStore::is_deferred`]).

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Shape, Tensor};
use candle_nn::Init;

use super::{WeightRequest, Weights};
use crate::Result;

impl Weights {
    /// The tensor `name` under this path, like [`Weights::get_with_init`], but not kept in the
    /// state dict: for a module that stores it in another form (quantized blocks), so that the
    /// values are freed as soon as the module has converted them. The state dict records the
    /// request instead ([`crate::ParamStore::is_deferred`]): the parameter still counts, and
    /// saving (or [`crate::ParamStore::fetch`]) asks the source for it again, so a model saves
    /// the tensors it was loaded from whatever form it computes with. Trainable handles keep
    /// every tensor. [`Weights::get_unkept_chunks`] hands it in pieces instead.
    pub fn get_unkept(&self, shape: impl Into<Shape>, name: &str, init: Init) -> Result<Tensor> {
        if self.trainable {
            return self.get_with_init(shape, name, init);
        }
        let shape = shape.into();
        let full = self.full_name(name);
        let tensor = self.source.get(&self.request(&full, &shape, init))?;
        self.defer(full, shape, init);
        Ok(tensor)
    }

    /// The tensor `name` under this path, unkept as [`Weights::get_unkept`] gives it, handed to
    /// `each` in consecutive chunks along its first dimension (rows of a matrix, experts of a
    /// stacked bank), at most `rows` entries each where the source can split it
    /// ([`crate::WeightSource::get_chunks`]; otherwise one chunk). A quantizer fed this way
    /// holds one chunk of floats at a time instead of the whole tensor: what keeps a model
    /// quantized at load near the size of its quantized weights. A trainable handle keeps the
    /// tensor and hands it as one chunk.
    pub fn get_unkept_chunks(
        &self,
        shape: impl Into<Shape>,
        name: &str,
        init: Init,
        rows: usize,
        each: &mut dyn FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        if self.trainable {
            return each(self.get_with_init(shape, name, init)?);
        }
        let shape = shape.into();
        let full = self.full_name(name);
        self.source
            .get_chunks(&self.request(&full, &shape, init), rows, each)?;
        self.defer(full, shape, init);
        Ok(())
    }

    /// The tensor `name` under this path as the source stores it, when it stores it in
    /// quantized blocks ([`crate::WeightSource::packed`]): for a module that computes on them
    /// as they are. Recorded like [`Weights::get_unkept`]: the state dict holds the request,
    /// and saving asks for the tensor again as floats (dequantized). `Ok(None)` when the
    /// source holds it as floats (then ask with [`Weights::get`]), and always for a trainable
    /// handle.
    pub fn get_packed(&self, shape: impl Into<Shape>, name: &str) -> Result<Option<Arc<QTensor>>> {
        if self.trainable {
            return Ok(None);
        }
        let shape = shape.into();
        let full = self.full_name(name);
        let init = Init::Const(0.0);
        let Some(packed) = self.source.packed(&self.request(&full, &shape, init))? else {
            return Ok(None);
        };
        self.defer(full, shape, init);
        Ok(Some(packed))
    }

    pub(super) fn request<'a>(
        &'a self,
        name: &'a str,
        shape: &'a Shape,
        init: Init,
    ) -> WeightRequest<'a> {
        WeightRequest {
            name,
            shape,
            init,
            dtype: self.dtype,
            device: &self.device,
            scopes: &self.scopes,
        }
    }

    /// Records `full` in the state dict as a request the source can answer again.
    fn defer(&self, full: String, shape: Shape, init: Init) {
        let (source, scopes, dtype, device) = (
            self.source.clone(),
            self.scopes.clone(),
            self.dtype,
            self.device.clone(),
        );
        let (again, asked) = (full.clone(), shape.clone());
        let produce = Arc::new(move || {
            source.get(&WeightRequest {
                name: &again,
                shape: &asked,
                init,
                dtype,
                device: &device,
                scopes: &scopes,
            })
        });
        self.params.insert_deferred(
            &full,
            (shape, self.dtype, self.device.clone()),
            &self.scopes,
            produce,
        );
    }
}
