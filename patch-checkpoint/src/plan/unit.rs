//! A conversion unit: the keys one converter claimed with one group key, planned into the
//! shapes and names of what it produces.

use std::sync::Arc;

use crate::claim::Group;
use crate::convert::{ListSide, UnitShapes};
use crate::ops::{Part, Shapes};
use crate::origin::UnitOrigin;

use super::{ConverterId, KeyId, Plan};

/// Keys grouped under one converter, producing one set of targets.
#[derive(Debug)]
pub(crate) struct Unit {
    converter: ConverterId,
    /// Keys per source part (lists in index order).
    parts: Vec<Part<KeyId>>,
    /// Target names, flattened in output order (empty if the plan failed).
    targets: Vec<String>,
    /// The shapes, or why the unit cannot run.
    shapes: Result<UnitShapes, String>,
    runs: usize,
    /// Which outputs were handed out.
    served: Vec<bool>,
    /// Provenance, made on first run.
    origin: Option<Arc<UnitOrigin>>,
}

impl Unit {
    /// The converter whose unit this is.
    pub fn converter(&self) -> ConverterId {
        self.converter
    }

    /// Keys per source part.
    pub fn parts(&self) -> &[Part<KeyId>] {
        &self.parts
    }

    /// The names of the outputs, flattened in output order.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// The shape plan, or why the unit cannot run.
    pub fn shapes(&self) -> Result<&UnitShapes, &String> {
        self.shapes.as_ref()
    }

    /// The keys the unit reads.
    pub fn keys(&self) -> Vec<KeyId> {
        self.parts
            .iter()
            .flat_map(|s| s.items().into_iter().copied())
            .collect()
    }

    /// The flattened output shapes (none if the plan failed).
    pub fn output_shapes(&self) -> Vec<Vec<usize>> {
        match &self.shapes {
            Ok(p) => p
                .outputs()
                .iter()
                .flat_map(|s| s.items().into_iter().cloned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Whether output `index` was handed out.
    pub fn is_served(&self, index: usize) -> bool {
        self.served.get(index).copied().unwrap_or(false)
    }

    /// Whether the unit ran at least once.
    pub fn has_run(&self) -> bool {
        self.runs > 0
    }

    /// The provenance, once made.
    pub fn origin(&self) -> Option<&Arc<UnitOrigin>> {
        self.origin.as_ref()
    }

    pub(super) fn set_origin(&mut self, origin: Arc<UnitOrigin>) {
        self.origin = Some(origin);
    }

    pub(super) fn serve(&mut self, index: usize) {
        if let Some(s) = self.served.get_mut(index) {
            *s = true;
        }
    }

    pub(super) fn ran(&mut self) {
        self.runs += 1;
    }

    /// Whether `other` reads the same keys into the same targets with the same converter.
    pub(super) fn same_as(&self, other: &Unit) -> bool {
        self.converter == other.converter
            && self.parts == other.parts
            && self.targets == other.targets
    }

    /// Takes over what `old` (the same unit before a re-plan) did: runs, outputs served,
    /// provenance.
    pub(super) fn take_history(&mut self, old: Unit) {
        self.runs = old.runs;
        self.served = old.served;
        self.origin = old.origin;
    }
}

impl Plan {
    /// Builds the unit of one group of claims: its keys per source part, checked (every
    /// pattern matched, lists complete and of one length), then its shapes and target names.
    pub(super) fn make_unit(&self, group: &Group<ConverterId, KeyId>) -> Unit {
        let key = &group.key;
        let (prefix, suffix, unit_caps) = (&key.prefix, &key.suffix, &key.captures);
        let c = &self.converters[key.converter].compiled;
        let list = c.list == ListSide::Sources;
        let mut problem: Option<String> = None;
        let mut key_parts = Vec::with_capacity(c.sources.len());
        for (i, entries) in group.by_pattern(c.sources.len()).into_iter().enumerate() {
            if entries.is_empty() {
                let mut caps = unit_caps.to_vec();
                if list {
                    caps.push(0);
                }
                problem.get_or_insert(format!(
                    "no checkpoint key matches source pattern {:?} here (looked for {:?})",
                    c.sources[i].text,
                    format!("{prefix}{}{suffix}", c.sources[i].fill(&caps))
                ));
                key_parts.push(Part::Many(Vec::new()));
                continue;
            }
            if list {
                let indices: Vec<usize> = entries.iter().map(|(i, _)| *i).collect();
                if indices.iter().enumerate().any(|(pos, &i)| pos != i) {
                    let missing: Vec<usize> = (0..=*indices.last().unwrap_or(&0))
                        .filter(|i| !indices.contains(i))
                        .collect();
                    problem.get_or_insert(format!(
                        "module list of {:?} has indices {indices:?}: {}",
                        c.sources[i].text,
                        if missing.is_empty() {
                            "an index appears twice".to_string()
                        } else {
                            format!("missing {missing:?}")
                        }
                    ));
                }
                key_parts.push(Part::Many(entries.into_iter().map(|(_, &k)| k).collect()));
            } else {
                if entries.len() > 1 {
                    problem
                        .get_or_insert(format!("several keys match {:?} here", c.sources[i].text));
                }
                key_parts.push(Part::One(*entries[0].1));
            }
        }
        if problem.is_none() && list {
            let lens: Vec<usize> = key_parts.iter().map(|s| s.items().len()).collect();
            if lens.iter().any(|&n| n != lens[0]) {
                problem = Some(format!("module lists of different lengths {lens:?}"));
            }
        }
        let shapes = match problem {
            Some(p) => Err(p),
            None => {
                let inputs: Shapes = key_parts
                    .iter()
                    .map(|s| s.mapped(|&k| self.keys[k].meta().shape.clone()))
                    .collect();
                c.plan_forward(inputs)
            }
        };
        let target =
            |j: usize, caps: &[usize]| format!("{prefix}{}{suffix}", c.targets[j].fill(caps));
        let targets = match &shapes {
            Ok(shapes) => shapes
                .outputs()
                .iter()
                .enumerate()
                .flat_map(|(j, part)| match part {
                    Part::One(_) => vec![target(j, unit_caps)],
                    Part::Many(items) => (0..items.len())
                        .map(|i| {
                            let mut caps = unit_caps.to_vec();
                            caps.push(i);
                            target(j, &caps)
                        })
                        .collect(),
                })
                .collect(),
            Err(_) if c.list != ListSide::Targets => {
                (0..c.targets.len()).map(|j| target(j, unit_caps)).collect()
            }
            Err(_) => Vec::new(),
        };
        Unit {
            converter: key.converter,
            served: vec![false; targets.len()],
            parts: key_parts,
            targets,
            shapes,
            runs: 0,
            origin: None,
        }
    }
}
