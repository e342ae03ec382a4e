//! `SplitModulelist`: every single part unstacked along a dimension into a module list;
//! undone by stacking it.

use candle_core::Tensor;

use super::{
    MergeModulelist, OpRules, Part, PartKinds, Shapes, Step, StepRules, check_dim, need_single,
    single_tensors,
};
use crate::Op;

/// [`Op::SplitModulelist`], which is also its step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SplitModulelist {
    /// Dimension to unstack.
    pub dim: usize,
}

impl OpRules for SplitModulelist {
    fn parts(&self, before: PartKinds, _n_targets: usize) -> Result<PartKinds, String> {
        need_single(&Op::SplitModulelist { dim: self.dim }.to_string(), before)?;
        Ok(PartKinds {
            lists: true,
            ..before
        })
    }

    fn step(&self, _stage: &Shapes, _n_targets: usize) -> Result<Step, String> {
        Ok(Step::SplitModulelist(self.clone()))
    }

    fn input_shapes(&self, output: &Shapes, _n_in: usize) -> Result<Shapes, String> {
        let dim = self.dim;
        output
            .iter()
            .map(|part| match part {
                Part::Many(items) if !items.is_empty() && dim <= items[0].len() => {
                    let mut s = items[0].clone();
                    s.insert(dim, items.len());
                    Ok(Part::One(s))
                }
                _ => Err(format!(
                    "{}: cannot stack {part:?}",
                    Op::SplitModulelist { dim }
                )),
            })
            .collect()
    }
}

impl StepRules for SplitModulelist {
    fn shapes(&self, stage: &Shapes) -> Result<Shapes, String> {
        stage
            .iter()
            .map(|s| match s {
                Part::Many(_) => {
                    Err("SplitModulelist needs single tensors, got a module list".to_string())
                }
                Part::One(shape) => {
                    check_dim(shape, self.dim, "SplitModulelist")?;
                    let mut item = shape.clone();
                    let n = item.remove(self.dim);
                    Ok(Part::Many(vec![item; n]))
                }
            })
            .collect()
    }

    fn run(&self, stage: Vec<Part<Tensor>>) -> candle_core::Result<Vec<Part<Tensor>>> {
        let dim = self.dim;
        single_tensors(stage)?
            .into_iter()
            .map(|t| {
                let n = t.dim(dim)?;
                let items = (0..n)
                    .map(|i| t.narrow(dim, i, 1)?.squeeze(dim))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(Part::Many(items))
            })
            .collect()
    }

    fn reverse(&self, _input: &Shapes) -> Step {
        Step::MergeModulelist(MergeModulelist { dim: self.dim })
    }
}
