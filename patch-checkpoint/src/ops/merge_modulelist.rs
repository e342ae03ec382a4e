//! `MergeModulelist`: every module-list part stacked into one tensor along a new dimension;
//! undone by unstacking it.

use candle_core::Tensor;

use super::{OpRules, Part, PartKinds, Shapes, SplitModulelist, Step, StepRules};
use crate::Op;

/// [`Op::MergeModulelist`], which is also its step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MergeModulelist {
    /// Position of the new dimension.
    pub dim: usize,
}

impl OpRules for MergeModulelist {
    fn parts(&self, before: PartKinds, _n_targets: usize) -> Result<PartKinds, String> {
        if !before.lists {
            return Err(format!(
                "{} needs module lists: the source patterns must have one more `*` than the targets",
                Op::MergeModulelist { dim: self.dim }
            ));
        }
        Ok(PartKinds {
            lists: false,
            ..before
        })
    }

    fn step(&self, _stage: &Shapes, _n_targets: usize) -> Result<Step, String> {
        Ok(Step::MergeModulelist(self.clone()))
    }

    fn input_shapes(&self, output: &Shapes, _n_in: usize) -> Result<Shapes, String> {
        let dim = self.dim;
        output
            .iter()
            .map(|part| match part {
                Part::One(s) if dim < s.len() => {
                    let mut item = s.clone();
                    let n = item.remove(dim);
                    Ok(Part::Many(vec![item; n]))
                }
                _ => Err(format!(
                    "{}: cannot unstack {part:?}",
                    Op::MergeModulelist { dim }
                )),
            })
            .collect()
    }
}

impl StepRules for MergeModulelist {
    fn shapes(&self, stage: &Shapes) -> Result<Shapes, String> {
        let dim = self.dim;
        stage
            .iter()
            .map(|s| match s {
                Part::One(_) => Err("MergeModulelist needs module lists (source patterns with one more `*` than the targets)".to_string()),
                Part::Many(list) => {
                    let first = list.first().ok_or("MergeModulelist of an empty list")?;
                    if list.iter().any(|t| t != first) {
                        return Err(format!("MergeModulelist: list entries have different shapes {list:?}"));
                    }
                    if dim > first.len() {
                        return Err(format!("MergeModulelist: dim {dim} is out of range for shape {first:?}"));
                    }
                    let mut out = first.clone();
                    out.insert(dim, list.len());
                    Ok(Part::One(out))
                }
            })
            .collect()
    }

    fn run(&self, stage: Vec<Part<Tensor>>) -> candle_core::Result<Vec<Part<Tensor>>> {
        stage
            .into_iter()
            .map(|s| match s {
                Part::Many(list) => Ok(Part::One(Tensor::stack(&list, self.dim)?)),
                Part::One(_) => Err(candle_core::Error::Msg("expected a module list".into())),
            })
            .collect()
    }

    fn reverse(&self, _input: &Shapes) -> Step {
        Step::SplitModulelist(SplitModulelist { dim: self.dim })
    }
}
