//! `Concatenate`: all single parts joined into one along a dimension; undone by a split with
//! the sizes the parts had.

use candle_core::Tensor;

use super::{
    OpRules, Part, PartKinds, Shapes, Split, Step, StepRules, check_dim, equal_parts, need_single,
    single_tensors, singles,
};
use crate::Op;

/// [`Op::Concatenate`], which is also its step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Concatenate {
    /// Dimension to concatenate along.
    pub dim: usize,
}

impl OpRules for Concatenate {
    fn parts(&self, before: PartKinds, _n_targets: usize) -> Result<PartKinds, String> {
        need_single(&Op::Concatenate { dim: self.dim }.to_string(), before)?;
        Ok(PartKinds { count: 1, ..before })
    }

    fn step(&self, _stage: &Shapes, _n_targets: usize) -> Result<Step, String> {
        Ok(Step::Concatenate(self.clone()))
    }

    fn input_shapes(&self, output: &Shapes, n_in: usize) -> Result<Shapes, String> {
        equal_parts(&Op::Concatenate { dim: self.dim }, output, n_in, self.dim)
    }
}

impl StepRules for Concatenate {
    fn shapes(&self, stage: &Shapes) -> Result<Shapes, String> {
        let dim = self.dim;
        let inputs = singles(stage, "Concatenate")?;
        let first = inputs.first().ok_or("Concatenate of nothing")?;
        check_dim(first, dim, "Concatenate")?;
        let mut out = (*first).clone();
        out[dim] = 0;
        for s in &inputs {
            let same_rest = s.len() == first.len()
                && s.iter()
                    .zip(first.iter())
                    .enumerate()
                    .all(|(i, (a, b))| i == dim || a == b);
            if !same_rest {
                return Err(format!(
                    "Concatenate along dim {dim}: shapes {:?} differ outside dim {dim}",
                    inputs
                ));
            }
            out[dim] += s[dim];
        }
        Ok(vec![Part::One(out)])
    }

    fn run(&self, stage: Vec<Part<Tensor>>) -> candle_core::Result<Vec<Part<Tensor>>> {
        let inputs = single_tensors(stage)?;
        Ok(vec![Part::One(Tensor::cat(&inputs, self.dim)?)])
    }

    fn reverse(&self, input: &Shapes) -> Step {
        Step::Split(Split {
            dim: self.dim,
            sizes: input
                .iter()
                .map(|s| match s {
                    Part::One(t) => t.get(self.dim).copied().unwrap_or(0),
                    Part::Many(_) => 0,
                })
                .collect(),
        })
    }
}
