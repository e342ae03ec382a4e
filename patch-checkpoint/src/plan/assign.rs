//! Assigning keys: their effective names (scoped renamings), the converters' claims on them,
//! and the units those claims group into, indexed by target name.

use crate::accounting::Problem;
use crate::claim::{Claims, Side};

use super::{ConverterId, KeyId, Plan, Renamed, UnitId, under};

impl Plan {
    /// Computes effective names and converter claims for `keys`, groups them into units and
    /// indexes them. Returns the new units.
    pub(super) fn assign(&mut self, keys: &[KeyId]) -> Vec<UnitId> {
        let mut claims: Claims<ConverterId, KeyId> = Claims::new(Side::Sources);
        for &k in keys {
            let name = self.effective_name(k);
            match self.by_name.get(&name) {
                Some(&other) if other != k => self.problems.push(Problem::Conflict {
                    detail: format!(
                        "checkpoint keys {:?} and {:?} both load as {name:?}",
                        self.keys[other].original(),
                        self.keys[k].original()
                    ),
                }),
                _ => {
                    self.by_name.insert(name.clone(), k);
                }
            }
            // Converters: innermost scope first, then the registry's.
            let mut order: Vec<ConverterId> = Vec::new();
            for s in self.covering(&name).into_iter().rev() {
                order.extend(&self.scopes[s].ids.converters);
            }
            order.extend(&self.registry.converters);
            let converters = order.into_iter().map(|c| (c, &self.converters[c].compiled));
            // A key no converter claims is served by its name alone.
            let _unclaimed = claims.offer(&name, k, converters);
        }
        let mut new_units = Vec::new();
        for group in claims.into_groups() {
            let unit = self.make_unit(&group);
            let converter = unit.converter();
            let targets = unit.targets().to_vec();
            let keys = unit.keys();
            let u = self.units.push(Some(unit));
            for k in keys {
                self.keys[k].unit = Some(u);
            }
            for (index, t) in targets.into_iter().enumerate() {
                if let Some(other) = self.by_target.get(&t) {
                    let other_desc = self
                        .unit(other.unit)
                        .map(|o| self.describe_unit(o))
                        .unwrap_or_default();
                    let this = &self.converters[converter];
                    self.problems.push(Problem::Conflict {
                        detail: format!(
                            "{t:?} is produced by both {other_desc} and {} ({}); the first is used",
                            this.compiled.describe(),
                            this.owner
                        ),
                    });
                } else {
                    self.by_target
                        .insert(t, super::OutputRef { unit: u, index });
                }
            }
            new_units.push(u);
        }
        new_units
    }

    /// Applies the renamings of the scopes covering key `k` (outer scopes first) to its base
    /// name, records the chain, and returns the effective name.
    fn effective_name(&mut self, k: KeyId) -> String {
        let mut name = self.keys[k].base.clone();
        let mut chain: Vec<Renamed> = self.keys[k]
            .renamed_by
            .iter()
            .filter(|r| self.renamings[r.renaming].owner.is_registry())
            .cloned()
            .collect();
        for s in self.covering(&name) {
            let prefix = &self.scopes[s].prefix;
            if !under(&name, prefix) {
                continue;
            }
            for &r in &self.scopes[s].ids.renamings {
                let renaming = &self.renamings[r];
                let next = renaming.compiled.forward(&name).into_owned();
                if next == name {
                    continue;
                }
                if !under(&next, prefix) {
                    self.problems.push(Problem::Conflict {
                        detail: format!(
                            "{} carried by {} renames {name:?} to {next:?}, outside its path",
                            renaming.compiled.describe(),
                            renaming.owner
                        ),
                    });
                    continue;
                }
                chain.push(Renamed {
                    renaming: r,
                    description: format!("{} ({})", renaming.compiled.describe(), renaming.owner),
                });
                name = next;
            }
        }
        self.keys[k].name = name.clone();
        self.keys[k].renamed_by = chain;
        name
    }
}
