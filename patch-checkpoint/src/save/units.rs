//! Save units: the groups of parameters that become groups of checkpoint keys, traced back
//! through the origin each parameter was loaded with (or planned without one), and run.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::ops::{Part, Shapes, Step, run_steps};
use crate::origin::OriginKind;
use crate::safetensors_write::OutTensor;
use crate::{Param, Result, Transform, Weights};

use super::without_origin::plan_without_origin;
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

/// Runs a save unit: its checkpoint tensors, in output order.
pub(super) fn run_unit(
    unit: &SaveUnit,
    params: &HashMap<String, Tensor>,
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
                let t = params.get(name).ok_or_else(|| {
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
                Ok(t.clone())
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

/// Groups every recorded parameter into save units.
pub(super) fn plan_units(
    weights: &Weights,
    transforms: &[Transform],
    options: &SaveOptions,
) -> Result<Vec<SaveUnit>> {
    let entries = weights.params().entries();
    let ties = weights.params().ties();
    let shapes: HashMap<&str, &Param> = entries.iter().map(|(n, p)| (n.as_str(), p)).collect();
    let mut units = Vec::new();
    let mut done_units: Vec<*const crate::origin::UnitOrigin> = Vec::new();
    let mut pending: Vec<(&str, &Param)> = Vec::new();
    for (name, p) in &entries {
        if ties.contains_key(name) {
            continue;
        }
        match weights.source().origin(name).map(|o| o.0) {
            Some(OriginKind::Key { key, dtype }) => units.push(SaveUnit {
                inputs: vec![name.clone()],
                stage: vec![Part::One(p.tensor.dims().to_vec())],
                steps: Vec::new(),
                outputs: vec![OutTensor {
                    name: key.clone(),
                    dtype: out_dtype(options, dtype),
                    shape: p.tensor.dims().to_vec(),
                }],
                what: format!("checkpoint key {key:?}"),
            }),
            Some(OriginKind::Unit { unit, .. }) => {
                let ptr = Arc::as_ptr(&unit);
                if done_units.contains(&ptr) {
                    continue;
                }
                done_units.push(ptr);
                for t in &unit.targets {
                    if !shapes.contains_key(t.as_str()) {
                        return Err(save_err(
                            name,
                            format!(
                                "{} made it together with {t:?}, which the model never asked for, so the checkpoint tensors cannot be rebuilt",
                                unit.description
                            ),
                        ));
                    }
                }
                let stage0 = &unit.shapes.stages[0];
                let outputs = unit
                    .sources
                    .iter()
                    .zip(stage0)
                    .flat_map(|(keys, shapes)| keys.items().into_iter().zip(shapes.items()))
                    .map(|((key, dtype), shape)| OutTensor {
                        name: key.clone(),
                        dtype: out_dtype(options, *dtype),
                        shape: shape.clone(),
                    })
                    .collect();
                units.push(SaveUnit {
                    inputs: unit.targets.clone(),
                    stage: unit.shapes.outputs().clone(),
                    steps: unit.shapes.reverse_steps(),
                    outputs,
                    what: unit.description.clone(),
                });
            }
            Some(OriginKind::Placeholder { problem }) => {
                return Err(save_err(
                    name,
                    format!(
                        "it is a placeholder for a tensor the checkpoint could not provide ({problem}); Weights::finish reports every such problem"
                    ),
                ));
            }
            None => pending.push((name.as_str(), p)),
        }
    }
    if !pending.is_empty() {
        units.extend(plan_without_origin(&pending, transforms, options)?);
    }
    Ok(units)
}
