//! `Interleave`: all single parts (equal shapes) merged row by row into one along a
//! dimension; undone by de-interleaving into as many parts.

use candle_core::Tensor;

use super::{
    DeinterleaveInto, OpRules, Part, PartKinds, Shapes, Step, StepRules, check_dim, equal_parts,
    need_single, single_tensors, singles,
};
use crate::Op;

/// [`Op::Interleave`], which is also its step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Interleave {
    /// Dimension to interleave along.
    pub dim: usize,
}

impl OpRules for Interleave {
    fn parts(&self, before: PartKinds, _n_targets: usize) -> Result<PartKinds, String> {
        need_single(&Op::Interleave { dim: self.dim }.to_string(), before)?;
        Ok(PartKinds { count: 1, ..before })
    }

    fn step(&self, _stage: &Shapes, _n_targets: usize) -> Result<Step, String> {
        Ok(Step::Interleave(self.clone()))
    }

    fn input_shapes(&self, output: &Shapes, n_in: usize) -> Result<Shapes, String> {
        equal_parts(&Op::Interleave { dim: self.dim }, output, n_in, self.dim)
    }
}

impl StepRules for Interleave {
    fn shapes(&self, stage: &Shapes) -> Result<Shapes, String> {
        let inputs = singles(stage, "Interleave")?;
        let first = inputs.first().ok_or("Interleave of nothing")?;
        check_dim(first, self.dim, "Interleave")?;
        if inputs.iter().any(|s| s != first) {
            return Err(format!("Interleave needs equal shapes, got {inputs:?}"));
        }
        let mut out = (*first).clone();
        out[self.dim] *= inputs.len();
        Ok(vec![Part::One(out)])
    }

    fn run(&self, stage: Vec<Part<Tensor>>) -> candle_core::Result<Vec<Part<Tensor>>> {
        let dim = self.dim;
        let inputs = single_tensors(stage)?;
        let stacked = Tensor::stack(&inputs, dim + 1)?;
        let mut shape = stacked.dims().to_vec();
        let n = shape.remove(dim + 1);
        shape[dim] *= n;
        Ok(vec![Part::One(stacked.reshape(shape)?)])
    }

    fn reverse(&self, input: &Shapes) -> Step {
        Step::Deinterleave(DeinterleaveInto {
            dim: self.dim,
            n: input.len(),
        })
    }
}
