//! Save units for parameters that did not come from a checkpoint (a model built from its
//! config): claimed by the target patterns of the transforms that would have produced them
//! ([`crate::claim`] in reverse), planned backwards from their shapes, and un-renamed.

use std::sync::Arc;

use candle_core::DType;

use crate::claim::{Claims, Group, Side};
use crate::compile::{CompiledTransforms, Owner};
use crate::convert::{CompiledConverter, ListSide};
use crate::ops::{Part, Shapes};
use crate::plan::under;
use crate::safetensors_write::OutTensor;
use crate::{Param, Result, Transform, TransformScope};

use super::unit::{SaveUnit, out_dtype};
use super::{SaveOptions, save_err};

/// The compiled transforms of the registry or of one replacement scope.
struct CompiledScope {
    prefix: String,
    owner: Owner,
    transforms: CompiledTransforms,
}

/// A converter of the registry (`scope: None`) or of a compiled scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConverterRef {
    scope: Option<usize>,
    index: usize,
}

/// A parameter waiting for its save unit, with the compiled scopes it was asked for under
/// (outermost first).
struct Pending<'a> {
    name: &'a str,
    param: &'a Param,
    scopes: Vec<usize>,
}

/// Every compiled transform a planning without origins may use.
struct Compiled {
    registry: CompiledScope,
    /// Scopes, each identified by its transforms' address and its prefix.
    scopes: Vec<(*const [Transform], CompiledScope)>,
}

impl Compiled {
    /// The compiled scope of `s`, compiled on first use.
    fn scope(&mut self, s: &TransformScope) -> Result<usize> {
        let ptr = Arc::as_ptr(&s.transforms);
        let found = self
            .scopes
            .iter()
            .position(|(q, scope)| std::ptr::addr_eq(*q, ptr) && scope.prefix == s.prefix);
        if let Some(i) = found {
            return Ok(i);
        }
        let scope = CompiledScope {
            prefix: s.prefix.clone(),
            owner: Owner::Replacement {
                name: s.owner,
                prefix: s.prefix.clone(),
            },
            transforms: CompiledTransforms::new(&s.transforms)?,
        };
        self.scopes.push((ptr, scope));
        Ok(self.scopes.len() - 1)
    }

    fn converter(&self, c: ConverterRef) -> (&CompiledConverter, &Owner) {
        let scope = match c.scope {
            None => &self.registry,
            Some(s) => &self.scopes[s].1,
        };
        (&scope.transforms.converters[c.index], &scope.owner)
    }

    /// The converters that may have produced `name`: its scopes', innermost first, then the
    /// registry's.
    fn converters_for(
        &self,
        name: &str,
        scopes: &[usize],
    ) -> Vec<(ConverterRef, &CompiledConverter)> {
        let mut order = Vec::new();
        for &s in scopes.iter().rev() {
            let scope = &self.scopes[s].1;
            if under(name, &scope.prefix) {
                order.extend(
                    scope
                        .transforms
                        .converters
                        .iter()
                        .enumerate()
                        .map(|(index, c)| {
                            (
                                ConverterRef {
                                    scope: Some(s),
                                    index,
                                },
                                c,
                            )
                        }),
                );
            }
        }
        order.extend(
            self.registry
                .transforms
                .converters
                .iter()
                .enumerate()
                .map(|(index, c)| (ConverterRef { scope: None, index }, c)),
        );
        order
    }

    /// The checkpoint key that loads as `name` under `scopes`: every renaming undone, inner
    /// scopes first, the registry's last.
    fn unrename(&self, name: &str, scopes: &[usize]) -> Result<String> {
        let mut n = name.to_string();
        for &s in scopes.iter().rev() {
            let scope = &self.scopes[s].1;
            if under(&n, &scope.prefix) {
                for r in scope.transforms.renamings.iter().rev() {
                    n = r.reverse(&n).map_err(|m| save_err(name, m))?;
                }
            }
        }
        for r in self.registry.transforms.renamings.iter().rev() {
            n = r.reverse(&n).map_err(|m| save_err(name, m))?;
        }
        Ok(n)
    }
}

/// Save units for parameters that did not come from a checkpoint: matched against the target
/// patterns of the transforms that would have produced them.
pub(super) fn plan_without_origin(
    pending: &[(&str, &Param)],
    transforms: &[Transform],
    options: &SaveOptions,
) -> Result<Vec<SaveUnit>> {
    let mut compiled = Compiled {
        registry: CompiledScope {
            prefix: String::new(),
            owner: Owner::Registry,
            transforms: CompiledTransforms::new(transforms)?,
        },
        scopes: Vec::new(),
    };
    let mut params = Vec::with_capacity(pending.len());
    for &(name, param) in pending {
        let scopes = param
            .scopes
            .iter()
            .map(|s| compiled.scope(s))
            .collect::<Result<Vec<_>>>()?;
        params.push(Pending {
            name,
            param,
            scopes,
        });
    }
    let mut claims: Claims<ConverterRef, Pending> = Claims::new(Side::Targets);
    let mut direct = Vec::new();
    for p in params {
        let converters = compiled.converters_for(p.name, &p.scopes);
        if let Err(p) = claims.offer(p.name, p, converters) {
            direct.push(p);
        }
    }
    let mut units = Vec::new();
    for p in direct {
        let shape = p.param.tensor.dims().to_vec();
        units.push(SaveUnit {
            inputs: vec![p.name.to_string()],
            stage: vec![Part::One(shape.clone())],
            steps: Vec::new(),
            outputs: vec![OutTensor {
                name: compiled.unrename(p.name, &p.scopes)?,
                dtype: out_dtype(options, p.param.tensor.dtype()),
                shape,
            }],
            what: format!("parameter {:?}", p.name),
        });
    }
    for group in claims.into_groups() {
        units.push(group_unit(&compiled, &group, options)?);
    }
    Ok(units)
}

/// The save unit of one group of claimed parameters: their shapes per target pattern, the
/// chain planned backwards to the checkpoint keys' shapes, and those keys' names.
fn group_unit(
    compiled: &Compiled,
    group: &Group<ConverterRef, Pending>,
    options: &SaveOptions,
) -> Result<SaveUnit> {
    let (conv, owner) = compiled.converter(group.key.converter);
    let (prefix, suffix, caps) = (&group.key.prefix, &group.key.suffix, &group.key.captures);
    let what = format!("{} ({owner})", conv.describe());
    let first = group.members.first().map(|m| &m.item);
    let first_name = first.map(|p| p.name).unwrap_or_default();
    let err = |m: String| save_err(first_name, format!("{what}: {m}"));
    let mut stage: Shapes = Vec::new();
    let mut inputs = Vec::new();
    let mut dtype = None;
    for (j, items) in group.by_pattern(conv.targets.len()).into_iter().enumerate() {
        let Some((_, item)) = items.first() else {
            return Err(err(format!(
                "the model has no tensor for target {:?} here, so the checkpoint tensors cannot be rebuilt",
                format!("{prefix}{}{suffix}", conv.targets[j].fill(caps))
            )));
        };
        if conv.list == ListSide::Targets {
            if items.iter().enumerate().any(|(pos, (i, _))| pos != *i) {
                return Err(err(format!(
                    "module list indices {:?} are not 0..n",
                    items.iter().map(|(i, _)| *i).collect::<Vec<_>>()
                )));
            }
            stage.push(Part::Many(
                items
                    .iter()
                    .map(|(_, p)| p.param.tensor.dims().to_vec())
                    .collect(),
            ));
        } else {
            stage.push(Part::One(item.param.tensor.dims().to_vec()));
        }
        for (_, p) in &items {
            dtype.get_or_insert(p.param.tensor.dtype());
            inputs.push(p.name.to_string());
        }
    }
    let shapes = conv.plan_backward(stage.clone()).map_err(err)?;
    let dtype = out_dtype(options, dtype.unwrap_or(DType::F32));
    let scopes = first.map(|p| p.scopes.as_slice()).unwrap_or_default();
    let mut outputs = Vec::new();
    for (i, part) in shapes.stages[0].iter().enumerate() {
        let fill = |extra: Option<usize>| {
            let mut c = caps.clone();
            c.extend(extra);
            format!("{prefix}{}{suffix}", conv.sources[i].fill(&c))
        };
        let named: Vec<(String, &Vec<usize>)> = match part {
            Part::One(shape) => vec![(fill(None), shape)],
            Part::Many(items) => items
                .iter()
                .enumerate()
                .map(|(idx, shape)| (fill(Some(idx)), shape))
                .collect(),
        };
        for (name, shape) in named {
            outputs.push(OutTensor {
                name: compiled.unrename(&name, scopes)?,
                dtype,
                shape: shape.clone(),
            });
        }
    }
    Ok(SaveUnit {
        inputs,
        stage,
        steps: shapes.reverse_steps(),
        outputs,
        what,
    })
}
