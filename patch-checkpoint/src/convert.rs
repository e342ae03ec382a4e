//! [`WeightConverter`] compiled: parsed patterns, the op chain checked against them, and the
//! shape planning of one unit in both directions.

#[cfg(test)]
use crate::ops::Part;
use crate::ops::{PartKinds, Shapes, Step, forward_step, op_rules};
use crate::pattern::KeyPattern;
use crate::{Error, Result, Transform, WeightConverter};

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
    /// The number of parts before each op of the chain, and at its end.
    counts: Vec<usize>,
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
            .map(|(i, s)| s.reverse(&self.stages[i]))
            .collect()
    }

    /// The output stage.
    pub fn outputs(&self) -> &Shapes {
        const NONE: &Shapes = &Vec::new();
        self.stages.last().unwrap_or(NONE)
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
        // Walk the chain on part kinds and counts.
        let n_targets = targets.len();
        let mut kinds = PartKinds {
            count: sources.len(),
            lists: list == ListSide::Sources,
        };
        let mut counts = Vec::with_capacity(spec.operations.len() + 1);
        for op in &spec.operations {
            counts.push(kinds.count);
            kinds = op_rules(op).parts(kinds, n_targets).map_err(err)?;
        }
        counts.push(kinds.count);
        let PartKinds { count, lists: many } = kinds;
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
            counts,
        })
    }

    /// `WeightConverter([..] -> [..], [ops])`.
    pub fn describe(&self) -> String {
        Transform::Converter(self.spec.clone()).to_string()
    }

    /// Plans a unit forward from its input shapes.
    pub fn plan_forward(&self, inputs: Shapes) -> std::result::Result<UnitShapes, String> {
        let mut stages = Vec::with_capacity(self.spec.operations.len() + 1);
        let mut steps = Vec::with_capacity(self.spec.operations.len());
        let mut stage = inputs;
        for op in &self.spec.operations {
            let (step, out) = forward_step(op, &stage, self.targets.len())?;
            steps.push(step);
            stages.push(std::mem::replace(&mut stage, out));
        }
        stages.push(stage);
        Ok(UnitShapes { stages, steps })
    }

    /// Plans a unit backwards from its output shapes (a model built without a checkpoint):
    /// every stage is inferred from the next; a `Concatenate` is assumed to join equal parts.
    pub fn plan_backward(&self, outputs: Shapes) -> std::result::Result<UnitShapes, String> {
        let mut stages = vec![outputs];
        for (op, &n_in) in self.spec.operations.iter().zip(&self.counts).rev() {
            let out = stages
                .last()
                .ok_or("a backward plan starts from the outputs")?;
            let inferred = op_rules(op).input_shapes(out, n_in)?;
            stages.push(inferred);
        }
        stages.reverse();
        // Re-plan forward from the inferred inputs: checks the inference and yields the steps.
        let forward = self.plan_forward(stages[0].clone())?;
        if Some(forward.outputs()) != stages.last() {
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
        stage = step.shapes(&stage)?;
    }
    Ok(stage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;

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
            Part::Many(vec![vec![3, 4]; 5]),
            Part::Many(vec![vec![3, 4]; 5]),
        ];
        let fwd = c.plan_forward(inputs.clone()).unwrap();
        assert_eq!(fwd.outputs(), &vec![Part::One(vec![5, 6, 4])]);
        let bwd = c.plan_backward(fwd.outputs().clone()).unwrap();
        assert_eq!(bwd, fwd);
        assert_eq!(
            check_steps(&fwd.reverse_steps(), fwd.outputs().clone()).unwrap(),
            inputs
        );
    }
}
