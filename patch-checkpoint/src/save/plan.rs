//! Planning a save: every recorded parameter grouped into save units, traced back through the
//! origin it was loaded with, or planned without one ([`super::without_origin`]).

use std::collections::HashMap;
use std::sync::Arc;

use crate::ops::Part;
use crate::origin::OriginKind;
use crate::safetensors_write::OutTensor;
use crate::{Param, Result, Transform, Weights};

use super::unit::{SaveUnit, out_dtype};
use super::without_origin::plan_without_origin;
use super::{SaveOptions, save_err};

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
