//! What the [`Op`]s do: every op's rules, one file per op, behind one dispatch point each.
//!
//! A chain works on a list of parts ([`Part`]): a tensor, or a module list of tensors. Each
//! [`Op`] of a converter becomes a [`Step`] once the shapes are known (a `Chunk` becomes a
//! split with explicit sizes, a reverse `Concatenate` a split with the sizes recorded at load),
//! so executing a step never guesses.
//!
//! An op's file holds all its rules: how it changes the parts a chain carries (checked when a
//! converter is compiled, [`OpRules::parts`]), the step it becomes on known shapes
//! ([`OpRules::step`]), the shapes it was given inferred from the ones it produced
//! ([`OpRules::input_shapes`], saving without a checkpoint), and for its step the shapes it
//! produces, what it does to tensors, and the step that undoes it ([`StepRules`]).

mod chunk;
mod concatenate;
mod deinterleave;
mod interleave;
mod merge_modulelist;
mod split_modulelist;
#[cfg(test)]
mod tests;
mod transpose;

use candle_core::Tensor;

use crate::Op;

pub(crate) use chunk::Split;
pub(crate) use concatenate::Concatenate;
pub(crate) use deinterleave::DeinterleaveInto;
pub(crate) use interleave::Interleave;
pub(crate) use merge_modulelist::MergeModulelist;
pub(crate) use split_modulelist::SplitModulelist;
pub(crate) use transpose::Transpose;

/// One position of a chain stage: a single tensor, or a module list of tensors (index order).
/// A *part*: one position of an op chain (never called a slot, which is patch-core's
/// contract a site fills).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part<T> {
    /// One tensor (or its shape, or its key).
    One(T),
    /// A module list, in index order.
    Many(Vec<T>),
}

impl<T> Part<T> {
    /// The same structure with fallible `f` applied to every item.
    pub fn map<U, E>(self, mut f: impl FnMut(T) -> Result<U, E>) -> Result<Part<U>, E> {
        Ok(match self {
            Part::One(t) => Part::One(f(t)?),
            Part::Many(v) => Part::Many(v.into_iter().map(f).collect::<Result<_, _>>()?),
        })
    }

    /// The same structure with `f` applied to every item.
    pub fn mapped<U>(&self, mut f: impl FnMut(&T) -> U) -> Part<U> {
        match self {
            Part::One(t) => Part::One(f(t)),
            Part::Many(v) => Part::Many(v.iter().map(f).collect()),
        }
    }

    /// The same structure, borrowing the items.
    pub fn as_ref(&self) -> Part<&T> {
        match self {
            Part::One(t) => Part::One(t),
            Part::Many(v) => Part::Many(v.iter().collect()),
        }
    }

    /// The items of the part, in order.
    pub fn items(&self) -> Vec<&T> {
        match self {
            Part::One(t) => vec![t],
            Part::Many(v) => v.iter().collect(),
        }
    }

    /// The items of the part, in order, owned.
    pub fn into_items(self) -> Vec<T> {
        match self {
            Part::One(t) => vec![t],
            Part::Many(v) => v,
        }
    }
}

/// A stage of shapes.
pub(crate) type Shapes = Vec<Part<Vec<usize>>>;

/// What a chain carries between two ops, as far as a converter's patterns tell before any
/// shape is known: how many parts, and whether they are module lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PartKinds {
    /// Number of parts.
    pub count: usize,
    /// Whether the parts are module lists.
    pub lists: bool,
}

/// An op's rules before shapes are known and while planning.
pub(crate) trait OpRules {
    /// The parts after the op, from the parts before it, or why the op does not fit them
    /// (`n_targets` is the converter's number of target patterns).
    fn parts(&self, before: PartKinds, n_targets: usize) -> Result<PartKinds, String>;

    /// The step the op becomes on input `stage`.
    fn step(&self, stage: &Shapes, n_targets: usize) -> Result<Step, String>;

    /// The shapes the op was given (`n_in` parts), inferred from the shapes it produced; when
    /// the sizes cannot be known, parts are assumed equal.
    fn input_shapes(&self, output: &Shapes, n_in: usize) -> Result<Shapes, String>;
}

/// A step's rules: its shapes, what it does to tensors, and the step that undoes it.
pub(crate) trait StepRules {
    /// The stage the step produces from `stage`, or why it cannot run on it.
    fn shapes(&self, stage: &Shapes) -> Result<Shapes, String>;

    /// Runs the step on tensors (whose shapes [`StepRules::shapes`] accepted).
    fn run(&self, stage: Vec<Part<Tensor>>) -> candle_core::Result<Vec<Part<Tensor>>>;

    /// The step that undoes this one, whose input stage was `input`.
    fn reverse(&self, input: &Shapes) -> Step;
}

/// An executable step: an [`Op`] with everything shape-dependent resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// All single parts -> one, concatenated.
    Concatenate(Concatenate),
    /// One single part -> one part per size.
    Split(Split),
    /// Every list part -> a tensor, stacked.
    MergeModulelist(MergeModulelist),
    /// Every single part -> a list, unstacked.
    SplitModulelist(SplitModulelist),
    /// Every tensor with two dimensions swapped.
    Transpose(Transpose),
    /// All single parts (equal shapes) -> one, interleaved.
    Interleave(Interleave),
    /// One single part -> `n`, de-interleaved.
    Deinterleave(DeinterleaveInto),
}

impl Step {
    /// The rules of this step (the one dispatch point over steps).
    fn rules(&self) -> &dyn StepRules {
        match self {
            Step::Concatenate(s) => s,
            Step::Split(s) => s,
            Step::MergeModulelist(s) => s,
            Step::SplitModulelist(s) => s,
            Step::Transpose(s) => s,
            Step::Interleave(s) => s,
            Step::Deinterleave(s) => s,
        }
    }

    /// See [`StepRules::shapes`].
    pub fn shapes(&self, stage: &Shapes) -> Result<Shapes, String> {
        self.rules().shapes(stage)
    }

    /// See [`StepRules::run`].
    pub fn run(&self, stage: Vec<Part<Tensor>>) -> candle_core::Result<Vec<Part<Tensor>>> {
        self.rules().run(stage)
    }

    /// See [`StepRules::reverse`].
    pub fn reverse(&self, input: &Shapes) -> Step {
        self.rules().reverse(input)
    }
}

/// The rules of `op` (the one dispatch point over ops).
pub(crate) fn op_rules(op: &Op) -> Box<dyn OpRules> {
    match *op {
        Op::Concatenate { dim } => Box::new(Concatenate { dim }),
        Op::Chunk { dim } => Box::new(chunk::Chunk { dim }),
        Op::MergeModulelist { dim } => Box::new(MergeModulelist { dim }),
        Op::SplitModulelist { dim } => Box::new(SplitModulelist { dim }),
        Op::Transpose { dim0, dim1 } => Box::new(Transpose { dim0, dim1 }),
        Op::Interleave { dim } => Box::new(Interleave { dim }),
        Op::Deinterleave { dim } => Box::new(deinterleave::Deinterleave { dim }),
    }
}

/// The step forward op `op` becomes on input `stage`, and the stage it produces. `n_targets`
/// is the converter's number of target patterns (what `Chunk`/`Deinterleave` split into).
pub(crate) fn forward_step(
    op: &Op,
    stage: &Shapes,
    n_targets: usize,
) -> Result<(Step, Shapes), String> {
    let step = op_rules(op).step(stage, n_targets)?;
    let out = step.shapes(stage).map_err(|e| format!("{op}: {e}"))?;
    Ok((step, out))
}

/// Runs `steps` in order on `stage`; every output tensor comes back contiguous (own storage),
/// so the inputs are freed as soon as the caller drops them.
pub(crate) fn run_steps(
    steps: &[Step],
    mut stage: Vec<Part<Tensor>>,
) -> candle_core::Result<Vec<Part<Tensor>>> {
    for step in steps {
        stage = step.run(stage)?;
    }
    stage
        .into_iter()
        .map(|s| s.map(|t| t.contiguous()))
        .collect()
}

/// The shapes of a stage whose parts must all be single tensors.
fn singles<'a>(stage: &'a Shapes, what: &str) -> Result<Vec<&'a Vec<usize>>, String> {
    stage
        .iter()
        .map(|s| match s {
            Part::One(t) => Ok(t),
            Part::Many(_) => Err(format!("{what} needs single tensors, got a module list (stack it with MergeModulelist first)")),
        })
        .collect()
}

/// The tensors of a stage whose parts must all be single tensors.
fn single_tensors(stage: Vec<Part<Tensor>>) -> candle_core::Result<Vec<Tensor>> {
    stage
        .into_iter()
        .map(|s| match s {
            Part::One(t) => Ok(t),
            Part::Many(_) => Err(candle_core::Error::Msg("expected single tensors".into())),
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

/// The error of an op that needs single tensors where the chain carries module lists.
fn need_single(op: &str, before: PartKinds) -> Result<(), String> {
    if before.lists {
        Err(format!(
            "{op} needs single tensors, but the parts are module lists here (add MergeModulelist before it)"
        ))
    } else {
        Ok(())
    }
}

/// The parts after an op that splits one single tensor into one part per target (`Chunk`,
/// `Deinterleave`).
fn split_parts(op: &Op, before: PartKinds, n_targets: usize) -> Result<PartKinds, String> {
    need_single(&op.to_string(), before)?;
    if before.count != 1 {
        return Err(format!(
            "{op} needs exactly one tensor, but {} parts reach it (concatenate them first)",
            before.count
        ));
    }
    Ok(PartKinds {
        count: n_targets,
        ..before
    })
}

/// The `n_in` equal parts a joined tensor came from (`Concatenate`, `Interleave` planned
/// backwards without recorded sizes).
fn equal_parts(op: &Op, output: &Shapes, n_in: usize, dim: usize) -> Result<Shapes, String> {
    let [Part::One(s)] = output.as_slice() else {
        return Err(format!("{op} produces one tensor"));
    };
    if dim >= s.len() || n_in == 0 || s[dim] % n_in != 0 {
        return Err(format!(
            "{op}: cannot tell how {s:?} splits into {n_in} parts along dim {dim} (no checkpoint recorded the sizes, and they are not equal)"
        ));
    }
    let mut part = s.clone();
    part[dim] /= n_in;
    Ok(vec![Part::One(part); n_in])
}

/// The one tensor a split tensor came from (`Chunk`, `Deinterleave` planned backwards).
fn joined(op: &Op, output: &Shapes, dim: usize) -> Result<Shapes, String> {
    let mut total: Option<Vec<usize>> = None;
    for part in output {
        let Part::One(s) = part else {
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
    Ok(vec![Part::One(
        total.ok_or_else(|| format!("{op} of nothing"))?,
    )])
}
