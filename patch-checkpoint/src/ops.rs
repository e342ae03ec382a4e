//! What the [`Op`]s do, on shapes (planning, no data) and on tensors (execution).
//!
//! A chain works on a list of slots ([`Slot`]): a tensor, or a module list of tensors. Each
//! [`Op`] of a converter becomes a [`Step`] once the shapes are known (a `Chunk` becomes a
//! split with explicit sizes, a reverse `Concatenate` a split with the sizes recorded at load),
//! so executing a step never guesses.

use candle_core::Tensor;

use crate::Op;

/// One slot of a chain stage: a tensor, or a module list of tensors (index order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Slot<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Slot<T> {
    pub fn map<U, E>(self, mut f: impl FnMut(T) -> Result<U, E>) -> Result<Slot<U>, E> {
        Ok(match self {
            Slot::One(t) => Slot::One(f(t)?),
            Slot::Many(v) => Slot::Many(v.into_iter().map(f).collect::<Result<_, _>>()?),
        })
    }

    /// The same structure with `f` applied to every item.
    pub fn mapped<U>(&self, mut f: impl FnMut(&T) -> U) -> Slot<U> {
        match self {
            Slot::One(t) => Slot::One(f(t)),
            Slot::Many(v) => Slot::Many(v.iter().map(f).collect()),
        }
    }

    pub fn as_ref(&self) -> Slot<&T> {
        match self {
            Slot::One(t) => Slot::One(t),
            Slot::Many(v) => Slot::Many(v.iter().collect()),
        }
    }

    /// The tensors of the slot, in order.
    pub fn items(&self) -> Vec<&T> {
        match self {
            Slot::One(t) => vec![t],
            Slot::Many(v) => v.iter().collect(),
        }
    }

    pub fn into_items(self) -> Vec<T> {
        match self {
            Slot::One(t) => vec![t],
            Slot::Many(v) => v,
        }
    }
}

/// A stage of shapes.
pub(crate) type Shapes = Vec<Slot<Vec<usize>>>;

/// An executable step: an [`Op`] with everything shape-dependent resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// All single slots -> one, concatenated along `dim`.
    Cat { dim: usize },
    /// One single slot -> one slot per size, split along `dim`.
    Split { dim: usize, sizes: Vec<usize> },
    /// Every list slot -> a tensor, stacked along new `dim`.
    Stack { dim: usize },
    /// Every single slot -> a list, unstacked along `dim`.
    Unstack { dim: usize },
    /// Every tensor, `dim0` and `dim1` swapped.
    Transpose { dim0: usize, dim1: usize },
    /// All single slots (equal shapes) -> one, interleaved along `dim`.
    Interleave { dim: usize },
    /// One single slot -> `n`, de-interleaved along `dim`.
    Deinterleave { dim: usize, n: usize },
}

fn singles<'a>(stage: &'a Shapes, what: &str) -> Result<Vec<&'a Vec<usize>>, String> {
    stage
        .iter()
        .map(|s| match s {
            Slot::One(t) => Ok(t),
            Slot::Many(_) => Err(format!("{what} needs single tensors, got a module list (stack it with MergeModulelist first)")),
        })
        .collect()
}

fn check_dim(shape: &[usize], dim: usize, what: &str) -> Result<(), String> {
    if dim >= shape.len() {
        Err(format!(
            "{what}: dim {dim} is out of range for shape {shape:?}"
        ))
    } else {
        Ok(())
    }
}

/// The step forward op `op` becomes on input `stage`, and the stage it produces. `n_targets`
/// is the converter's number of target patterns (what `Chunk`/`Deinterleave` split into).
pub(crate) fn forward_step(
    op: &Op,
    stage: &Shapes,
    n_targets: usize,
) -> Result<(Step, Shapes), String> {
    let step = match *op {
        Op::Concatenate { dim } => Step::Cat { dim },
        Op::Chunk { dim } => {
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
            Step::Split {
                dim,
                sizes: vec![shape[dim] / n_targets; n_targets],
            }
        }
        Op::MergeModulelist { dim } => Step::Stack { dim },
        Op::SplitModulelist { dim } => Step::Unstack { dim },
        Op::Transpose { dim0, dim1 } => Step::Transpose { dim0, dim1 },
        Op::Interleave { dim } => Step::Interleave { dim },
        Op::Deinterleave { dim } => Step::Deinterleave { dim, n: n_targets },
    };
    let out = step_shapes(&step, stage).map_err(|e| format!("{op}: {e}"))?;
    Ok((step, out))
}

/// The step that undoes forward step `step`, whose input stage was `input`.
pub(crate) fn reverse_step(step: &Step, input: &Shapes) -> Step {
    match step {
        Step::Cat { dim } => Step::Split {
            dim: *dim,
            sizes: input
                .iter()
                .map(|s| match s {
                    Slot::One(t) => t.get(*dim).copied().unwrap_or(0),
                    Slot::Many(_) => 0,
                })
                .collect(),
        },
        Step::Split { dim, .. } => Step::Cat { dim: *dim },
        Step::Stack { dim } => Step::Unstack { dim: *dim },
        Step::Unstack { dim } => Step::Stack { dim: *dim },
        Step::Transpose { dim0, dim1 } => Step::Transpose {
            dim0: *dim1,
            dim1: *dim0,
        },
        Step::Interleave { dim } => Step::Deinterleave {
            dim: *dim,
            n: input.len(),
        },
        Step::Deinterleave { dim, .. } => Step::Interleave { dim: *dim },
    }
}

/// The stage `step` produces from `stage`, or why it cannot run on it.
pub(crate) fn step_shapes(step: &Step, stage: &Shapes) -> Result<Shapes, String> {
    match step {
        Step::Cat { dim } => {
            let inputs = singles(stage, "Concatenate")?;
            let first = inputs.first().ok_or("Concatenate of nothing")?;
            check_dim(first, *dim, "Concatenate")?;
            let mut out = (*first).clone();
            out[*dim] = 0;
            for s in &inputs {
                let same_rest = s.len() == first.len()
                    && s.iter().zip(first.iter()).enumerate().all(|(i, (a, b))| i == *dim || a == b);
                if !same_rest {
                    return Err(format!(
                        "Concatenate along dim {dim}: shapes {:?} differ outside dim {dim}",
                        inputs
                    ));
                }
                out[*dim] += s[*dim];
            }
            Ok(vec![Slot::One(out)])
        }
        Step::Split { dim, sizes } => {
            let inputs = singles(stage, "Chunk")?;
            let [shape] = inputs.as_slice() else {
                return Err(format!("split needs exactly one tensor, got {}", inputs.len()));
            };
            check_dim(shape, *dim, "split")?;
            if sizes.iter().sum::<usize>() != shape[*dim] {
                return Err(format!("cannot split size {} of {shape:?} along dim {dim} into {sizes:?}", shape[*dim]));
            }
            Ok(sizes
                .iter()
                .map(|&n| {
                    let mut s = (*shape).clone();
                    s[*dim] = n;
                    Slot::One(s)
                })
                .collect())
        }
        Step::Stack { dim } => stage
            .iter()
            .map(|s| match s {
                Slot::One(_) => Err("MergeModulelist needs module lists (source patterns with one more `*` than the targets)".to_string()),
                Slot::Many(list) => {
                    let first = list.first().ok_or("MergeModulelist of an empty list")?;
                    if list.iter().any(|t| t != first) {
                        return Err(format!("MergeModulelist: list entries have different shapes {list:?}"));
                    }
                    if *dim > first.len() {
                        return Err(format!("MergeModulelist: dim {dim} is out of range for shape {first:?}"));
                    }
                    let mut out = first.clone();
                    out.insert(*dim, list.len());
                    Ok(Slot::One(out))
                }
            })
            .collect(),
        Step::Unstack { dim } => stage
            .iter()
            .map(|s| match s {
                Slot::Many(_) => Err("SplitModulelist needs single tensors, got a module list".to_string()),
                Slot::One(shape) => {
                    check_dim(shape, *dim, "SplitModulelist")?;
                    let mut item = shape.clone();
                    let n = item.remove(*dim);
                    Ok(Slot::Many(vec![item; n]))
                }
            })
            .collect(),
        Step::Transpose { dim0, dim1 } => stage
            .iter()
            .map(|s| {
                s.clone().map(|mut shape| {
                    check_dim(&shape, *dim0.max(dim1), "Transpose")?;
                    shape.swap(*dim0, *dim1);
                    Ok::<_, String>(shape)
                })
            })
            .collect(),
        Step::Interleave { dim } => {
            let inputs = singles(stage, "Interleave")?;
            let first = inputs.first().ok_or("Interleave of nothing")?;
            check_dim(first, *dim, "Interleave")?;
            if inputs.iter().any(|s| s != first) {
                return Err(format!("Interleave needs equal shapes, got {inputs:?}"));
            }
            let mut out = (*first).clone();
            out[*dim] *= inputs.len();
            Ok(vec![Slot::One(out)])
        }
        Step::Deinterleave { dim, n } => {
            let inputs = singles(stage, "Deinterleave")?;
            let [shape] = inputs.as_slice() else {
                return Err(format!("Deinterleave needs exactly one tensor, got {}", inputs.len()));
            };
            check_dim(shape, *dim, "Deinterleave")?;
            if *n == 0 || shape[*dim] % n != 0 {
                return Err(format!("Deinterleave cannot split size {} of {shape:?} into {n} parts", shape[*dim]));
            }
            let mut out = (*shape).clone();
            out[*dim] /= n;
            Ok(vec![Slot::One(out); *n])
        }
    }
}

fn single(stage: Vec<Slot<Tensor>>) -> candle_core::Result<Vec<Tensor>> {
    stage
        .into_iter()
        .map(|s| match s {
            Slot::One(t) => Ok(t),
            Slot::Many(_) => Err(candle_core::Error::Msg("expected single tensors".into())),
        })
        .collect()
}

/// Runs `step` on tensors (whose shapes [`step_shapes`] accepted).
pub(crate) fn run_step(
    step: &Step,
    stage: Vec<Slot<Tensor>>,
) -> candle_core::Result<Vec<Slot<Tensor>>> {
    Ok(match step {
        Step::Cat { dim } => {
            let inputs = single(stage)?;
            vec![Slot::One(Tensor::cat(&inputs, *dim)?)]
        }
        Step::Split { dim, sizes } => {
            let inputs = single(stage)?;
            let t = inputs
                .first()
                .ok_or_else(|| candle_core::Error::Msg("split of nothing".into()))?;
            let mut start = 0;
            let mut out = Vec::with_capacity(sizes.len());
            for &n in sizes {
                out.push(Slot::One(t.narrow(*dim, start, n)?));
                start += n;
            }
            out
        }
        Step::Stack { dim } => stage
            .into_iter()
            .map(|s| match s {
                Slot::Many(list) => Ok(Slot::One(Tensor::stack(&list, *dim)?)),
                Slot::One(_) => Err(candle_core::Error::Msg("expected a module list".into())),
            })
            .collect::<candle_core::Result<_>>()?,
        Step::Unstack { dim } => single(stage)?
            .into_iter()
            .map(|t| {
                let n = t.dim(*dim)?;
                let items = (0..n)
                    .map(|i| t.narrow(*dim, i, 1)?.squeeze(*dim))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(Slot::Many(items))
            })
            .collect::<candle_core::Result<_>>()?,
        Step::Transpose { dim0, dim1 } => stage
            .into_iter()
            .map(|s| s.map(|t| t.transpose(*dim0, *dim1)))
            .collect::<candle_core::Result<_>>()?,
        Step::Interleave { dim } => {
            let inputs = single(stage)?;
            let stacked = Tensor::stack(&inputs, dim + 1)?;
            let mut shape = stacked.dims().to_vec();
            let n = shape.remove(dim + 1);
            shape[*dim] *= n;
            vec![Slot::One(stacked.reshape(shape)?)]
        }
        Step::Deinterleave { dim, n } => {
            let inputs = single(stage)?;
            let t = inputs
                .first()
                .ok_or_else(|| candle_core::Error::Msg("deinterleave of nothing".into()))?;
            let mut shape = t.dims().to_vec();
            shape[*dim] /= n;
            shape.insert(dim + 1, *n);
            let t = t.contiguous()?.reshape(shape)?;
            (0..*n)
                .map(|j| Ok(Slot::One(t.narrow(dim + 1, j, 1)?.squeeze(dim + 1)?)))
                .collect::<candle_core::Result<_>>()?
        }
    })
}

/// Runs `steps` in order on `stage`; every output tensor comes back contiguous (own storage),
/// so the inputs are freed as soon as the caller drops them.
pub(crate) fn run_steps(
    steps: &[Step],
    mut stage: Vec<Slot<Tensor>>,
) -> candle_core::Result<Vec<Slot<Tensor>>> {
    for step in steps {
        stage = run_step(step, stage)?;
    }
    stage
        .into_iter()
        .map(|s| s.map(|t| t.contiguous()))
        .collect()
}
