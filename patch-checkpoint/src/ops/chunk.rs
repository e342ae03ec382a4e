//! `Chunk`: one single part split into one equal part per target; its step is a split with
//! explicit sizes (also what undoes a concatenation), undone by a concatenation.

use candle_core::Tensor;

use super::{
    Concatenate, OpRules, Part, PartKinds, Shapes, Step, StepRules, check_dim, joined,
    single_tensors, singles, split_parts,
};
use crate::Op;

/// [`Op::Chunk`].
pub(crate) struct Chunk {
    /// Dimension to split along.
    pub dim: usize,
}

impl OpRules for Chunk {
    fn parts(&self, before: PartKinds, n_targets: usize) -> Result<PartKinds, String> {
        split_parts(&Op::Chunk { dim: self.dim }, before, n_targets)
    }

    fn step(&self, stage: &Shapes, n_targets: usize) -> Result<Step, String> {
        let dim = self.dim;
        let inputs = singles(stage, "Chunk")?;
        let [shape] = inputs.as_slice() else {
            return Err(format!(
                "Chunk needs exactly one tensor, got {}",
                inputs.len()
            ));
        };
        check_dim(shape, dim, "Chunk")?;
        if n_targets == 0 || shape[dim] % n_targets != 0 {
            return Err(format!(
                "Chunk cannot split size {} (dim {dim} of {shape:?}) into {n_targets} equal parts",
                shape[dim]
            ));
        }
        Ok(Step::Split(Split {
            dim,
            sizes: vec![shape[dim] / n_targets; n_targets],
        }))
    }

    fn input_shapes(&self, output: &Shapes, _n_in: usize) -> Result<Shapes, String> {
        joined(&Op::Chunk { dim: self.dim }, output, self.dim)
    }
}

/// One single part split into parts of `sizes` along `dim`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    /// Dimension to split along.
    pub dim: usize,
    /// Size of each part along `dim`.
    pub sizes: Vec<usize>,
}

impl StepRules for Split {
    fn shapes(&self, stage: &Shapes) -> Result<Shapes, String> {
        let (dim, sizes) = (self.dim, &self.sizes);
        let inputs = singles(stage, "Chunk")?;
        let [shape] = inputs.as_slice() else {
            return Err(format!(
                "split needs exactly one tensor, got {}",
                inputs.len()
            ));
        };
        check_dim(shape, dim, "split")?;
        if sizes.iter().sum::<usize>() != shape[dim] {
            return Err(format!(
                "cannot split size {} of {shape:?} along dim {dim} into {sizes:?}",
                shape[dim]
            ));
        }
        Ok(sizes
            .iter()
            .map(|&n| {
                let mut s = (*shape).clone();
                s[dim] = n;
                Part::One(s)
            })
            .collect())
    }

    fn run(&self, stage: Vec<Part<Tensor>>) -> candle_core::Result<Vec<Part<Tensor>>> {
        let inputs = single_tensors(stage)?;
        let t = inputs
            .first()
            .ok_or_else(|| candle_core::Error::Msg("split of nothing".into()))?;
        let mut start = 0;
        let mut out = Vec::with_capacity(self.sizes.len());
        for &n in &self.sizes {
            out.push(Part::One(t.narrow(self.dim, start, n)?));
            start += n;
        }
        Ok(out)
    }

    fn reverse(&self, _input: &Shapes) -> Step {
        Step::Concatenate(Concatenate { dim: self.dim })
    }
}
