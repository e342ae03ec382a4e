//! A save unit: one group of parameters that becomes one group of checkpoint keys, and how it
//! runs.

use candle_core::{DType, Tensor};

use crate::Result;
use crate::ops::{Part, Shapes, Step, run_steps};
use crate::safetensors_write::OutTensor;

use super::{SaveOptions, save_err};

/// One group of parameters that becomes one group of checkpoint keys.
pub(super) struct SaveUnit {
    /// Parameter names, flattened in the order of `stage`.
    pub inputs: Vec<String>,
    /// The structure and shapes of the parameters (the forward chain's output stage).
    pub stage: Shapes,
    /// Steps from the parameters to the checkpoint tensors.
    pub steps: Vec<Step>,
    /// The checkpoint tensors, flattened in output order.
    pub outputs: Vec<OutTensor>,
    /// For error messages.
    pub what: String,
}

/// Runs a save unit over the parameters `param` gives by name: its checkpoint tensors, in
/// output order.
pub(super) fn run_unit(
    unit: &SaveUnit,
    param: &dyn Fn(&str) -> Result<Option<Tensor>>,
) -> Result<Vec<Option<Tensor>>> {
    let mut inputs = unit.inputs.iter();
    let stage = unit
        .stage
        .iter()
        .map(|part| {
            part.as_ref().map(|shape| {
                let name = inputs
                    .next()
                    .ok_or_else(|| save_err(&unit.what, "internal: input count"))?;
                let t = param(name)?.ok_or_else(|| {
                    save_err(name, "it is no longer recorded in the parameter store")
                })?;
                if t.dims() != shape.as_slice() {
                    return Err(save_err(
                        name,
                        format!(
                            "it has shape {:?}, but it was loaded as {shape:?} ({})",
                            t.dims(),
                            unit.what
                        ),
                    ));
                }
                Ok(t)
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let outputs = run_steps(&unit.steps, stage)?;
    Ok(outputs
        .into_iter()
        .flat_map(Part::into_items)
        .map(Some)
        .collect())
}

/// The dtype a tensor stored as `own` is written in.
pub(super) fn out_dtype(options: &SaveOptions, own: DType) -> DType {
    match options.dtype {
        Some(d) if own.is_float() && d.is_float() => d,
        _ => own,
    }
}
