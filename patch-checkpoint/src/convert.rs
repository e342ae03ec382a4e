//! [`WeightConverter`] compiled: parsed patterns, the op chain checked against them, and the
//! shape planning of one unit in both directions.

#[cfg(test)]
use crate::ops::step_shapes;
use crate::ops::{Shapes, Slot, Step, forward_step, reverse_step};
use crate::pattern::KeyPattern;
use crate::{Error, Op, Result, Transform, WeightConverter};

/// Which side of a converter indexes a module list with its last `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListSide {
    None,
    Sources,
    Targets,
}

/// A converter ready to plan with.
#[derive(Clone, Debug)]
pub(crate) struct CompiledConverter {
    pub spec: WeightConverter,
    pub sources: Vec<KeyPattern>,
    pub targets: Vec<KeyPattern>,
    pub list: ListSide,
}

/// The shape plan of one unit: every stage's shapes (forward order) and the steps between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnitShapes {
    pub stages: Vec<Shapes>,
    pub steps: Vec<Step>,
}

impl UnitShapes {
    /// The steps that undo the chain, last first.
    pub fn reverse_steps(&self) -> Vec<Step> {
        self.steps
            .iter()
            .enumerate()
            .rev()
            .map(|(i, s)| reverse_step(s, &self.stages[i]))
            .collect()
    }

    /// The output stage.
    pub fn outputs(&self) -> &Shapes {
        self.stages
            .last()
            .unwrap_or_else(|| unreachable!("a unit plan has at least its input stage"))
    }
}

impl CompiledConverter {
    /// Parses and checks `spec`.
    pub fn new(spec: &WeightConverter) -> Result<Self> {
        let err = |message: String| Error::Transform {
            transform: Transform::Converter(spec.clone()).to_string(),
            message,
        };
        if spec.source_patterns.is_empty() || spec.target_patterns.is_empty() {
            return Err(err(
                "a converter needs at least one source and one target pattern".into(),
            ));
        }
        let parse = |ps: &[String]| {
            ps.iter()
                .map(|p| KeyPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
        };
        let sources = parse(&spec.source_patterns).map_err(err)?;
        let targets = parse(&spec.target_patterns).map_err(err)?;
        let s = sources[0].stars();
        let t = targets[0].stars();
        if sources.iter().any(|p| p.stars() != s) || targets.iter().any(|p| p.stars() != t) {
            return Err(err("all source patterns must have the same number of `*`, and so must all target patterns".into()));
        }
        let list = if s == t {
            ListSide::None
        } else if s == t + 1 {
            ListSide::Sources
        } else if t == s + 1 {
            ListSide::Targets
        } else {
            return Err(err(format!(
                "sources have {s} `*` and targets {t}: they may differ by one at most (the module-list index)"
            )));
        };
        // Walk the chain on slot kinds and counts.
        let n_targets = targets.len();
        let mut count = sources.len();
        let mut many = list == ListSide::Sources;
        for op in &spec.operations {
            let need_single = |what: &str, many: bool| {
                if many {
                    Err(err(format!(
                        "{what} needs single tensors, but the slots are module lists here (add MergeModulelist before it)"
                    )))
                } else {
                    Ok(())
                }
            };
            match op {
                Op::Concatenate { .. } | Op::Interleave { .. } => {
                    need_single(&op.to_string(), many)?;
                    count = 1;
                }
                Op::Chunk { .. } | Op::Deinterleave { .. } => {
                    need_single(&op.to_string(), many)?;
                    if count != 1 {
                        return Err(err(format!(
                            "{op} needs exactly one tensor, but {count} slots reach it (concatenate them first)"
                        )));
                    }
                    count = n_targets;
                }
                Op::MergeModulelist { .. } => {
                    if !many {
                        return Err(err(format!(
                            "{op} needs module lists: the source patterns must have one more `*` than the targets"
                        )));
                    }
                    many = false;
                }
                Op::SplitModulelist { .. } => {
                    need_single(&op.to_string(), many)?;
                    many = true;
                }
                Op::Transpose { .. } => {}
            }
        }
        if count != n_targets {
            return Err(err(format!(
                "the chain ends with {count} tensors but there are {n_targets} target patterns"
            )));
        }
        if many != (list == ListSide::Targets) {
            return Err(err(if list == ListSide::Sources {
                "the sources index a module list (one more `*` than the targets) but the chain never stacks it: add MergeModulelist".into()
            } else if many {
                "the chain ends with module lists: the target patterns need one more `*` than the sources".into()
            } else {
                "the targets index a module list (one more `*` than the sources) but the chain never unstacks: add SplitModulelist".into()
            }));
        }
        Ok(Self {
            spec: spec.clone(),
            sources,
            targets,
            list,
        })
    }

    /// `WeightConverter([..] -> [..], [ops])`.
    pub fn describe(&self) -> String {
        Transform::Converter(self.spec.clone()).to_string()
    }

    /// Plans a unit forward from its input shapes.
    pub fn plan_forward(&self, inputs: Shapes) -> std::result::Result<UnitShapes, String> {
        let mut stages = vec![inputs];
        let mut steps = Vec::new();
        for op in &self.spec.operations {
            let (step, out) = forward_step(
                op,
                stages.last().unwrap_or_else(|| unreachable!()),
                self.targets.len(),
            )?;
            steps.push(step);
            stages.push(out);
        }
        Ok(UnitShapes { stages, steps })
    }

    /// Plans a unit backwards from its output shapes (a model built without a checkpoint):
    /// every stage is inferred from the next; a `Concatenate` is assumed to join equal parts.
    pub fn plan_backward(&self, outputs: Shapes) -> std::result::Result<UnitShapes, String> {
        // Slot counts before each op, from the front.
        let mut counts = vec![self.sources.len()];
        for op in &self.spec.operations {
            let c = *counts.last().unwrap_or(&0);
            counts.push(match op {
                Op::Concatenate { .. } | Op::Interleave { .. } => 1,
                Op::Chunk { .. } | Op::Deinterleave { .. } => self.targets.len(),
                _ => c,
            });
        }
        let mut stages = vec![outputs];
        for (i, op) in self.spec.operations.iter().enumerate().rev() {
            let out = stages.last().unwrap_or_else(|| unreachable!());
            let n_in = counts[i];
            let inferred: Shapes = match *op {
                Op::Concatenate { dim } | Op::Interleave { dim } => {
                    let [Slot::One(s)] = out.as_slice() else {
                        return Err(format!("{op} produces one tensor"));
                    };
                    if dim >= s.len() || s[dim] % n_in != 0 {
                        return Err(format!(
                            "{op}: cannot tell how {s:?} splits into {n_in} parts along dim {dim} (no checkpoint recorded the sizes, and they are not equal)"
                        ));
                    }
                    let mut part = s.clone();
                    part[dim] /= n_in;
                    vec![Slot::One(part); n_in]
                }
                Op::Chunk { dim } | Op::Deinterleave { dim } => {
                    let mut total: Option<Vec<usize>> = None;
                    for slot in out {
                        let Slot::One(s) = slot else {
                            return Err(format!("{op} produces single tensors"));
                        };
                        if dim >= s.len() {
                            return Err(format!("{op}: dim {dim} is out of range for {s:?}"));
                        }
                        match &mut total {
                            None => total = Some(s.clone()),
                            Some(t) => t[dim] += s[dim],
                        }
                    }
                    vec![Slot::One(total.ok_or_else(|| format!("{op} of nothing"))?)]
                }
                Op::MergeModulelist { dim } => out
                    .iter()
                    .map(|slot| match slot {
                        Slot::One(s) if dim < s.len() => {
                            let mut item = s.clone();
                            let n = item.remove(dim);
                            Ok(Slot::Many(vec![item; n]))
                        }
                        _ => Err(format!("{op}: cannot unstack {slot:?}")),
                    })
                    .collect::<std::result::Result<_, String>>()?,
                Op::SplitModulelist { dim } => out
                    .iter()
                    .map(|slot| match slot {
                        Slot::Many(items) if !items.is_empty() && dim <= items[0].len() => {
                            let mut s = items[0].clone();
                            s.insert(dim, items.len());
                            Ok(Slot::One(s))
                        }
                        _ => Err(format!("{op}: cannot stack {slot:?}")),
                    })
                    .collect::<std::result::Result<_, String>>()?,
                Op::Transpose { dim0, dim1 } => out
                    .iter()
                    .map(|slot| {
                        slot.clone().map(|mut s| {
                            if dim0.max(dim1) >= s.len() {
                                return Err(format!("{op}: dim out of range for {s:?}"));
                            }
                            s.swap(dim0, dim1);
                            Ok(s)
                        })
                    })
                    .collect::<std::result::Result<_, String>>()?,
            };
            stages.push(inferred);
        }
        stages.reverse();
        // Re-plan forward from the inferred inputs: checks the inference and yields the steps.
        let forward = self.plan_forward(stages[0].clone())?;
        if forward.outputs() != stages.last().unwrap_or_else(|| unreachable!()) {
            return Err(format!(
                "the chain does not reproduce shapes {:?} (it gives {:?})",
                stages.last(),
                forward.outputs()
            ));
        }
        Ok(forward)
    }
}

/// Checks that running `steps` on `stage` is valid, returning the output shapes.
#[cfg(test)]
pub(crate) fn check_steps(
    steps: &[Step],
    mut stage: Shapes,
) -> std::result::Result<Shapes, String> {
    for step in steps {
        stage = step_shapes(step, &stage)?;
    }
    Ok(stage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(s: &[&str], t: &[&str], ops: Vec<Op>) -> Result<CompiledConverter> {
        CompiledConverter::new(&WeightConverter::new(
            s.iter().copied(),
            t.iter().copied(),
            ops,
        ))
    }

    #[test]
    fn chain_validation() {
        assert!(
            conv(
                &["q_proj", "k_proj", "v_proj"],
                &["qkv_proj"],
                vec![Op::Concatenate { dim: 0 }]
            )
            .is_ok()
        );
        assert!(
            conv(
                &[
                    "mlp.experts.*.gate_proj.weight",
                    "mlp.experts.*.up_proj.weight"
                ],
                &["mlp.experts.gate_up_proj"],
                vec![Op::MergeModulelist { dim: 0 }, Op::Concatenate { dim: 1 }]
            )
            .is_ok()
        );
        let e = conv(
            &["experts.*.w"],
            &["experts.w"],
            vec![Op::Transpose { dim0: 0, dim1: 1 }],
        )
        .unwrap_err();
        assert!(e.to_string().contains("add MergeModulelist"), "{e}");
        let e = conv(&["a", "b"], &["c"], vec![]).unwrap_err();
        assert!(
            e.to_string().contains("2 tensors but there are 1 target"),
            "{e}"
        );
        let e = conv(
            &["experts.*.w", "experts.*.v"],
            &["experts.wv"],
            vec![Op::Concatenate { dim: 0 }],
        )
        .unwrap_err();
        assert!(e.to_string().contains("MergeModulelist"), "{e}");
        assert!(conv(&["a"], &["b", "c"], vec![Op::Chunk { dim: 0 }]).is_ok());
        let e = conv(&["a.*.x"], &["a.*.*.x"], vec![])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("never unstacks: add SplitModulelist"), "{e}");
    }

    #[test]
    fn backward_plan_matches_forward() {
        let c = conv(
            &[
                "mlp.experts.*.gate_proj.weight",
                "mlp.experts.*.up_proj.weight",
            ],
            &["mlp.experts.gate_up_proj"],
            vec![Op::MergeModulelist { dim: 0 }, Op::Concatenate { dim: 1 }],
        )
        .unwrap();
        let inputs = vec![
            Slot::Many(vec![vec![3, 4]; 5]),
            Slot::Many(vec![vec![3, 4]; 5]),
        ];
        let fwd = c.plan_forward(inputs.clone()).unwrap();
        assert_eq!(fwd.outputs(), &vec![Slot::One(vec![5, 6, 4])]);
        let bwd = c.plan_backward(fwd.outputs().clone()).unwrap();
        assert_eq!(bwd, fwd);
        assert_eq!(
            check_steps(&fwd.reverse_steps(), fwd.outputs().clone()).unwrap(),
            inputs
        );
    }
}
