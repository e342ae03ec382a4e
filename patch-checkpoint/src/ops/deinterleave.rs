//! `Deinterleave`: one single part split into one part per target by taking every n-th row
//! along a dimension; undone by interleaving the parts.

use candle_core::Tensor;

use super::{
    Interleave, OpRules, Part, PartKinds, Shapes, Step, StepRules, check_dim, joined,
    single_tensors, singles, split_parts,
};
use crate::Op;

/// [`Op::Deinterleave`].
pub(crate) struct Deinterleave {
    /// Dimension to de-interleave along.
    pub dim: usize,
}

impl OpRules for Deinterleave {
    fn parts(&self, before: PartKinds, n_targets: usize) -> Result<PartKinds, String> {
        split_parts(&Op::Deinterleave { dim: self.dim }, before, n_targets)
    }

    fn step(&self, _stage: &Shapes, n_targets: usize) -> Result<Step, String> {
        Ok(Step::Deinterleave(DeinterleaveInto {
            dim: self.dim,
            n: n_targets,
        }))
    }

    fn input_shapes(&self, output: &Shapes, _n_in: usize) -> Result<Shapes, String> {
        joined(&Op::Deinterleave { dim: self.dim }, output, self.dim)
    }
}

/// The step of [`Op::Deinterleave`]: one single part into `n` along `dim`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeinterleaveInto {
    /// Dimension to de-interleave along.
    pub dim: usize,
    /// Number of parts.
    pub n: usize,
}

impl StepRules for DeinterleaveInto {
    fn shapes(&self, stage: &Shapes) -> Result<Shapes, String> {
        let (dim, n) = (self.dim, self.n);
        let inputs = singles(stage, "Deinterleave")?;
        let [shape] = inputs.as_slice() else {
            return Err(format!(
                "Deinterleave needs exactly one tensor, got {}",
                inputs.len()
            ));
        };
        check_dim(shape, dim, "Deinterleave")?;
        if n == 0 || shape[dim] % n != 0 {
            return Err(format!(
                "Deinterleave cannot split size {} of {shape:?} into {n} parts",
                shape[dim]
            ));
        }
        let mut out = (*shape).clone();
        out[dim] /= n;
        Ok(vec![Part::One(out); n])
    }

    fn run(&self, stage: Vec<Part<Tensor>>) -> candle_core::Result<Vec<Part<Tensor>>> {
        let (dim, n) = (self.dim, self.n);
        let inputs = single_tensors(stage)?;
        let t = inputs
            .first()
            .ok_or_else(|| candle_core::Error::Msg("deinterleave of nothing".into()))?;
        let mut shape = t.dims().to_vec();
        shape[dim] /= n;
        shape.insert(dim + 1, n);
        let t = t.contiguous()?.reshape(shape)?;
        (0..n)
            .map(|j| Ok(Part::One(t.narrow(dim + 1, j, 1)?.squeeze(dim + 1)?)))
            .collect()
    }

    fn reverse(&self, _input: &Shapes) -> Step {
        Step::Interleave(Interleave { dim: self.dim })
    }
}
