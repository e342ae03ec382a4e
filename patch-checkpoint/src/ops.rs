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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    fn t(shape: &[usize], offset: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| offset + i as f32).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn v2(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2().unwrap()
    }

    fn one(stage: &[Slot<Tensor>], i: usize) -> &Tensor {
        match &stage[i] {
            Slot::One(t) => t,
            Slot::Many(_) => panic!("expected a tensor"),
        }
    }

    #[test]
    fn op_values() {
        let a = t(&[2, 2], 0.0); // [[0,1],[2,3]]
        let b = t(&[2, 2], 10.0); // [[10,11],[12,13]]
        let s = |v: Vec<Tensor>| v.into_iter().map(Slot::One).collect::<Vec<_>>();

        let out = run_steps(&[Step::Cat { dim: 1 }], s(vec![a.clone(), b.clone()])).unwrap();
        assert_eq!(
            v2(one(&out, 0)),
            vec![vec![0., 1., 10., 11.], vec![2., 3., 12., 13.]]
        );

        let out = run_steps(
            &[Step::Interleave { dim: 0 }],
            s(vec![a.clone(), b.clone()]),
        )
        .unwrap();
        assert_eq!(
            v2(one(&out, 0)),
            vec![vec![0., 1.], vec![10., 11.], vec![2., 3.], vec![12., 13.]]
        );

        let out = run_steps(
            &[Step::Deinterleave { dim: 0, n: 2 }],
            s(vec![t(&[4, 1], 0.0)]),
        )
        .unwrap();
        assert_eq!(v2(one(&out, 0)), vec![vec![0.], vec![2.]]);
        assert_eq!(v2(one(&out, 1)), vec![vec![1.], vec![3.]]);

        let out = run_steps(
            &[Step::Split {
                dim: 0,
                sizes: vec![1, 3],
            }],
            s(vec![t(&[4, 1], 0.0)]),
        )
        .unwrap();
        assert_eq!(v2(one(&out, 1)), vec![vec![1.], vec![2.], vec![3.]]);

        let out = run_steps(&[Step::Transpose { dim0: 0, dim1: 1 }], s(vec![a.clone()])).unwrap();
        assert_eq!(v2(one(&out, 0)), vec![vec![0., 2.], vec![1., 3.]]);

        let out = run_steps(
            &[Step::Stack { dim: 1 }],
            vec![Slot::Many(vec![a.clone(), b.clone()])],
        )
        .unwrap();
        assert_eq!(one(&out, 0).dims(), &[2, 2, 2]);
        assert_eq!(
            one(&out, 0).get(0).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![0., 1.], vec![10., 11.]]
        );

        let out = run_steps(&[Step::Unstack { dim: 0 }], s(vec![a])).unwrap();
        let Slot::Many(items) = &out[0] else { panic!() };
        assert_eq!(items[1].to_vec1::<f32>().unwrap(), vec![2., 3.]);
    }

    /// An op chain, the shapes it starts from, and its slot structure.
    fn case() -> impl Strategy<Value = (Vec<Op>, Shapes, usize)> {
        let shape = prop::collection::vec(1usize..4, 1..4);
        (shape, 0usize..7, 1usize..4, 0usize..3).prop_map(|(base, which, n, d)| {
            let dim = d % base.len();
            let rank = base.len();
            match which {
                // Concatenate n tensors of different sizes along dim.
                0 => {
                    let inputs = (0..n)
                        .map(|i| {
                            let mut s = base.clone();
                            s[dim] += i;
                            Slot::One(s)
                        })
                        .collect();
                    (vec![Op::Concatenate { dim }], inputs, 1)
                }
                // Chunk one tensor into n.
                1 => {
                    let mut s = base.clone();
                    s[dim] *= n;
                    (vec![Op::Chunk { dim }], vec![Slot::One(s)], n)
                }
                // Stack module lists of n, then concatenate the stacks (Qwen2-MoE's gate/up).
                2 => {
                    let lists = vec![
                        Slot::Many(vec![base.clone(); n]),
                        Slot::Many(vec![base.clone(); n]),
                    ];
                    (
                        vec![Op::MergeModulelist { dim: 0 }, Op::Concatenate { dim: 1 }],
                        lists,
                        1,
                    )
                }
                // Unstack along dim.
                3 => (
                    vec![Op::SplitModulelist { dim }],
                    vec![Slot::One(base.clone())],
                    1,
                ),
                // Transpose (needs two dims).
                4 => {
                    let mut s = base.clone();
                    if rank == 1 {
                        s.push(2);
                    }
                    let d1 = (dim + 1) % s.len();
                    (
                        vec![Op::Transpose {
                            dim0: dim,
                            dim1: d1,
                        }],
                        vec![Slot::One(s)],
                        1,
                    )
                }
                // Interleave n equal tensors.
                5 => (
                    vec![Op::Interleave { dim }],
                    vec![Slot::One(base.clone()); n],
                    1,
                ),
                // De-interleave one tensor into n.
                _ => {
                    let mut s = base.clone();
                    s[dim] *= n;
                    (vec![Op::Deinterleave { dim }], vec![Slot::One(s)], n)
                }
            }
        })
    }

    proptest! {
        #[test]
        fn every_op_round_trips((ops, inputs, n_targets) in case(), seed in 0u32..1000) {
            let mut stage: Shapes = inputs.clone();
            let mut steps = Vec::new();
            let mut stages = vec![stage.clone()];
            for op in &ops {
                let (step, out) = forward_step(op, &stage, n_targets).unwrap();
                steps.push(step);
                stage = out;
                stages.push(stage.clone());
            }
            let mut k = 0f32;
            let tensors: Vec<Slot<Tensor>> = inputs
                .iter()
                .map(|s| s.mapped(|shape| { k += 1000.0; t(shape, k + seed as f32) }))
                .collect();
            let out = run_steps(&steps, tensors.clone()).unwrap();
            // The shapes the planner predicted are the shapes produced.
            let produced: Shapes = out.iter().map(|s| s.mapped(|t| t.dims().to_vec())).collect();
            prop_assert_eq!(&produced, stages.last().unwrap());
            let reverse: Vec<Step> = steps.iter().enumerate().rev().map(|(i, s)| reverse_step(s, &stages[i])).collect();
            let back = run_steps(&reverse, out).unwrap();
            prop_assert_eq!(back.len(), tensors.len());
            for (a, b) in back.iter().zip(&tensors) {
                let (a, b) = (a.items(), b.items());
                prop_assert_eq!(a.len(), b.len());
                for (x, y) in a.iter().zip(b) {
                    prop_assert_eq!(x.dims(), y.dims());
                    prop_assert_eq!(
                        x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    );
                }
            }
        }
    }
}
