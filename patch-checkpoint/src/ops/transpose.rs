//! `Transpose`: two dimensions of every tensor swapped; its own reverse.

use candle_core::Tensor;

use super::{OpRules, PartKinds, Shapes, Step, StepRules, check_dim};
use crate::Op;

/// [`Op::Transpose`], which is also its step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transpose {
    /// First dimension.
    pub dim0: usize,
    /// Second dimension.
    pub dim1: usize,
}

impl OpRules for Transpose {
    fn parts(&self, before: PartKinds, _n_targets: usize) -> Result<PartKinds, String> {
        Ok(before)
    }

    fn step(&self, _stage: &Shapes, _n_targets: usize) -> Result<Step, String> {
        Ok(Step::Transpose(self.clone()))
    }

    fn input_shapes(&self, output: &Shapes, _n_in: usize) -> Result<Shapes, String> {
        let (dim0, dim1) = (self.dim0, self.dim1);
        output
            .iter()
            .map(|part| {
                part.clone().map(|mut s| {
                    if dim0.max(dim1) >= s.len() {
                        return Err(format!(
                            "{}: dim out of range for {s:?}",
                            Op::Transpose { dim0, dim1 }
                        ));
                    }
                    s.swap(dim0, dim1);
                    Ok(s)
                })
            })
            .collect()
    }
}

impl StepRules for Transpose {
    fn shapes(&self, stage: &Shapes) -> Result<Shapes, String> {
        stage
            .iter()
            .map(|s| {
                s.clone().map(|mut shape| {
                    check_dim(&shape, self.dim0.max(self.dim1), "Transpose")?;
                    shape.swap(self.dim0, self.dim1);
                    Ok::<_, String>(shape)
                })
            })
            .collect()
    }

    fn run(
        &self,
        stage: Vec<super::Part<Tensor>>,
    ) -> candle_core::Result<Vec<super::Part<Tensor>>> {
        stage
            .into_iter()
            .map(|s| s.map(|t| t.transpose(self.dim0, self.dim1)))
            .collect()
    }

    fn reverse(&self, _input: &Shapes) -> Step {
        Step::Transpose(Transpose {
            dim0: self.dim1,
            dim1: self.dim0,
        })
    }
}
