//! The name-level load plan: which checkpoint keys serve which requested names.
//!
//! Planning touches names and header shapes only, never tensor data:
//!
//! 1. Every key goes through the registry's renamings (in order), giving its *base* name.
//! 2. The renamings of every replacement scope whose prefix covers the name apply next, outer
//!    scopes first, giving the key's *effective* name: the model's namespace.
//! 3. Converters claim keys by effective name ([`crate::claim`]): the innermost scope's
//!    converters first, then outer scopes', then the registry's; the first source pattern
//!    that matches wins.
//! 4. Keys claimed by one converter are grouped into units by target names; a unit's shapes
//!    are planned from the headers, so a mis-fitting conversion is known before any read.
//!
//! A request is served by the unit that produces its name, else by the key whose effective
//! name it is. Scopes are learnt from requests (a replacement's transforms arrive with the
//! requests made under its path); a new scope re-plans the keys under its prefix, and a
//! conversion that already ran and would now change is reported as a conflict.
//!
//! The plan's state is private: the session reads it and changes it only through the
//! methods here (what a request consumed, which outputs were served, which units ran).

mod assign;
mod ids;
mod key;
mod scopes;
mod unit;

use std::collections::HashMap;
use std::sync::Arc;

use crate::Transform;
use crate::accounting::Problem;
use crate::compile::{CompiledTransforms, Owner};
use crate::convert::CompiledConverter;
use crate::origin::UnitOrigin;
use crate::rename::CompiledRenaming;
use crate::safetensors_io::candle_dtype;

use ids::Id;
pub(crate) use ids::{ConverterId, KeyId, RenamingId, ScopeId, Table, UnitId};
use key::Renamed;
pub(crate) use key::{Key, StoredKey};
pub(crate) use unit::Unit;

/// A renaming and who supplied it.
#[derive(Debug)]
struct OwnedRenaming {
    compiled: CompiledRenaming,
    owner: Owner,
}

/// A converter, who supplied it, and how many of its units ran.
#[derive(Debug)]
struct OwnedConverter {
    compiled: CompiledConverter,
    owner: Owner,
    units_run: usize,
}

/// The transforms of one supplier, by id in the plan's tables.
#[derive(Debug, Default)]
struct TransformIds {
    renamings: Vec<RenamingId>,
    converters: Vec<ConverterId>,
}

/// Transforms a replacement carries at a path, learnt from requests.
#[derive(Debug)]
struct ReplacementScope {
    prefix: String,
    /// The replacement's type name.
    name: &'static str,
    /// Kept alive so its address identifies it.
    transforms: Arc<[Transform]>,
    ids: TransformIds,
}

/// One output of a unit: the unit and the output's position in its flattened targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutputRef {
    /// The unit.
    pub unit: UnitId,
    /// The position in [`Unit::targets`].
    pub index: usize,
}

/// A transform that changed something, for the load report.
pub(crate) struct Fired {
    /// `WeightRenaming(...)` or `WeightConverter(...)`.
    pub transform: String,
    /// `registry`, or the replacement type.
    pub owner: &'static str,
    /// Keys renamed or units run.
    pub count: usize,
}

/// The plan of one checkpoint source.
#[derive(Debug)]
pub(crate) struct Plan {
    keys: Table<KeyId, Key>,
    converters: Table<ConverterId, OwnedConverter>,
    renamings: Table<RenamingId, OwnedRenaming>,
    registry: TransformIds,
    scopes: Table<ScopeId, ReplacementScope>,
    /// Units; a unit re-planned away leaves `None`.
    units: Table<UnitId, Option<Unit>>,
    /// Target name -> the unit output producing it.
    by_target: HashMap<String, OutputRef>,
    /// Effective name -> key.
    by_name: HashMap<String, KeyId>,
    /// Problems found while planning.
    problems: Vec<Problem>,
}

/// Whether dotted `name` is `prefix` or under it (every name is under the empty prefix).
pub(crate) fn under(name: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || (name.starts_with(prefix)
            && (name.len() == prefix.len() || name.as_bytes()[prefix.len()] == b'.'))
}

impl Plan {
    /// Plans `keys` under the registry's `transforms`.
    pub fn new(keys: Vec<StoredKey>, transforms: &[Transform]) -> crate::Result<Self> {
        let mut plan = Plan {
            keys: Table::new(),
            converters: Table::new(),
            renamings: Table::new(),
            registry: TransformIds::default(),
            scopes: Table::new(),
            units: Table::new(),
            by_target: HashMap::new(),
            by_name: HashMap::new(),
            problems: Vec::new(),
        };
        plan.registry = plan.add_transforms(CompiledTransforms::new(transforms)?, &Owner::Registry);
        for stored in keys {
            let mut base = stored.original.clone();
            let mut renamed_by = Vec::new();
            for &r in &plan.registry.renamings {
                let next = plan.renamings[r].compiled.forward(&base).into_owned();
                if next != base {
                    renamed_by.push(Renamed {
                        renaming: r,
                        description: plan.renamings[r].compiled.describe(),
                    });
                    base = next;
                }
            }
            plan.keys.push(Key {
                stored,
                name: base.clone(),
                base,
                renamed_by,
                unit: None,
                consumed: 0,
            });
        }
        let all: Vec<KeyId> = plan.keys.iter().map(|(k, _)| k).collect();
        plan.assign(&all);
        Ok(plan)
    }

    /// Adds compiled transforms to the plan's tables under `owner`.
    fn add_transforms(&mut self, compiled: CompiledTransforms, owner: &Owner) -> TransformIds {
        let renamings = compiled
            .renamings
            .into_iter()
            .map(|compiled| {
                self.renamings.push(OwnedRenaming {
                    compiled,
                    owner: owner.clone(),
                })
            })
            .collect();
        let converters = compiled
            .converters
            .into_iter()
            .map(|compiled| {
                self.converters.push(OwnedConverter {
                    compiled,
                    owner: owner.clone(),
                    units_run: 0,
                })
            })
            .collect();
        TransformIds {
            renamings,
            converters,
        }
    }

    /// The key `k`.
    pub fn key(&self, k: KeyId) -> &Key {
        &self.keys[k]
    }

    /// Every key, in file order.
    pub fn keys(&self) -> impl Iterator<Item = (KeyId, &Key)> {
        self.keys.iter()
    }

    /// The unit `u`, unless re-planned away.
    pub fn unit(&self, u: UnitId) -> Option<&Unit> {
        self.units[u].as_ref()
    }

    /// Every current unit.
    pub fn units(&self) -> impl Iterator<Item = &Unit> {
        self.units.values().flatten()
    }

    /// The unit output producing `name`, if any.
    pub fn output(&self, name: &str) -> Option<OutputRef> {
        self.by_target.get(name).copied()
    }

    /// The key whose effective name `name` is, if any.
    pub fn key_named(&self, name: &str) -> Option<KeyId> {
        self.by_name.get(name).copied()
    }

    /// Whether a unit or a key produces `name`.
    pub fn produces(&self, name: &str) -> bool {
        self.by_target.contains_key(name) || self.by_name.contains_key(name)
    }

    /// Problems found while planning.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Records that a request read `k` (or meant to).
    pub fn consume(&mut self, k: KeyId) {
        self.keys[k].consumed += 1;
    }

    /// Records that a request read every key of unit `u` (or meant to).
    pub fn consume_unit(&mut self, u: UnitId) {
        for k in self.unit(u).map(Unit::keys).unwrap_or_default() {
            self.consume(k);
        }
    }

    /// Records that `output` was handed out from the cache of an earlier run.
    pub fn mark_served(&mut self, output: OutputRef) {
        if let Some(unit) = self.units[output.unit].as_mut() {
            unit.serve(output.index);
        }
    }

    /// Records that the unit of `output` ran for a request of `output`: the run, the output
    /// served, the converter's count, every key read. The unit, unless it was re-planned away.
    pub fn unit_ran(&mut self, output: OutputRef) -> Option<&Unit> {
        let unit = self.units[output.unit].as_mut()?;
        unit.ran();
        unit.serve(output.index);
        let converter = unit.converter();
        self.converters[converter].units_run += 1;
        self.consume_unit(output.unit);
        self.unit(output.unit)
    }

    /// Provenance of unit `u` (built once).
    pub fn unit_origin(&mut self, u: UnitId) -> Option<Arc<UnitOrigin>> {
        let unit = self.unit(u)?;
        if let Some(o) = unit.origin() {
            return Some(o.clone());
        }
        let shapes = unit.shapes().ok()?.clone();
        let sources = unit
            .parts()
            .iter()
            .map(|s| {
                s.as_ref().map(|&k| {
                    let key = &self.keys[k];
                    candle_dtype(key.meta().dtype)
                        .map(|d| (key.original().to_string(), d))
                        .ok_or(())
                })
            })
            .collect::<Result<Vec<_>, ()>>()
            .ok()?;
        let origin = Arc::new(UnitOrigin {
            description: self.describe_unit(unit),
            sources,
            shapes,
            targets: unit.targets().to_vec(),
        });
        if let Some(unit) = self.units[u].as_mut() {
            unit.set_origin(origin.clone());
        }
        Some(origin)
    }

    /// `WeightConverter(...) (owner)`.
    pub fn describe_unit(&self, unit: &Unit) -> String {
        let c = &self.converters[unit.converter()];
        format!("{} ({})", c.compiled.describe(), c.owner)
    }

    /// Every transform with how often it fired: renamings (keys renamed), then converters
    /// (units run), each in the order the plan learnt them.
    pub fn fired(&self) -> Vec<Fired> {
        let mut renamed = vec![0; self.renamings.len()];
        for key in self.keys.values() {
            for r in &key.renamed_by {
                renamed[r.renaming.index()] += 1;
            }
        }
        let renamings = self
            .renamings
            .values()
            .zip(renamed)
            .map(|(r, count)| Fired {
                transform: r.compiled.describe(),
                owner: r.owner.name(),
                count,
            });
        let converters = self.converters.values().map(|c| Fired {
            transform: c.compiled.describe(),
            owner: c.owner.name(),
            count: c.units_run,
        });
        renamings.chain(converters).collect()
    }

    /// How a key got its name: `loads as "X" via WeightRenaming(...)`, or empty when no
    /// renaming changed it.
    pub fn rename_chain(&self, k: KeyId) -> String {
        let key = &self.keys[k];
        if key.renamed_by.is_empty() {
            return String::new();
        }
        let chain: Vec<&str> = key
            .renamed_by
            .iter()
            .map(|r| r.description.as_str())
            .collect();
        format!("loads as {:?} via {}", key.name, chain.join(" then "))
    }
}
