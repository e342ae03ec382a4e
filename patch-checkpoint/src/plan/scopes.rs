//! Learning a replacement's scope from a request, and re-planning the keys under its path.

use crate::TransformScope;
use crate::accounting::Problem;
use crate::compile::{CompiledTransforms, Owner};

use super::{KeyId, Plan, ReplacementScope, ScopeId, Unit, UnitId, under};

impl Plan {
    /// Learns the scopes of a request: each one not known yet is added and the keys under its
    /// path re-planned.
    pub fn learn_scopes(&mut self, scopes: &[TransformScope]) {
        for s in scopes {
            let known = self.scopes.values().any(|k| {
                std::sync::Arc::ptr_eq(&k.transforms, &s.transforms)
                    || (k.prefix == s.prefix && k.name == s.owner && *k.transforms == *s.transforms)
            });
            if !known {
                self.add_scope(s);
            }
        }
    }

    fn add_scope(&mut self, s: &TransformScope) {
        let owner = Owner::Replacement {
            name: s.owner,
            prefix: s.prefix.clone(),
        };
        let (compiled, errors) = CompiledTransforms::each(&s.transforms);
        for e in errors {
            self.problems.push(Problem::InvalidTransform {
                owner: owner.to_string(),
                message: e.to_string(),
            });
        }
        let empty = compiled.is_empty();
        let ids = self.add_transforms(compiled, &owner);
        self.scopes.push(ReplacementScope {
            prefix: s.prefix.clone(),
            name: s.owner,
            transforms: s.transforms.clone(),
            ids,
        });
        if !empty {
            self.replan_under(&s.prefix, s.owner);
        }
    }

    /// Re-plans the keys under `prefix`, with every unit they belong to, after the scope of
    /// replacement `name` was added there; a unit that already ran and now changes is a
    /// conflict.
    fn replan_under(&mut self, prefix: &str, name: &str) {
        let mut affected: Vec<KeyId> = self
            .keys
            .iter()
            .filter(|(_, key)| under(&key.base, prefix) || under(&key.name, prefix))
            .map(|(k, _)| k)
            .collect();
        let mut old_units: Vec<UnitId> = Vec::new();
        for &k in &affected {
            if let Some(u) = self.keys[k].unit
                && !old_units.contains(&u)
            {
                old_units.push(u);
            }
        }
        let mut removed: Vec<Unit> = Vec::new();
        for &u in &old_units {
            if let Some(unit) = self.units[u].take() {
                for t in unit.targets() {
                    if self.by_target.get(t).is_some_and(|o| o.unit == u) {
                        self.by_target.remove(t);
                    }
                }
                for k in unit.keys() {
                    if !affected.contains(&k) {
                        affected.push(k);
                    }
                }
                removed.push(unit);
            }
        }
        for &k in &affected {
            let key_name = &self.keys[k].name;
            if self.by_name.get(key_name) == Some(&k) {
                self.by_name.remove(key_name);
            }
            self.keys[k].unit = None;
        }
        affected.sort_unstable();
        let new_units = self.assign(&affected);
        for old in removed.into_iter().filter(Unit::has_run) {
            let same = new_units
                .iter()
                .copied()
                .find(|&n| self.units[n].as_ref().is_some_and(|u| u.same_as(&old)));
            match same {
                Some(n) => {
                    if let Some(unit) = self.units[n].as_mut() {
                        unit.take_history(old);
                    }
                }
                None => {
                    let converter = &self.converters[old.converter()];
                    self.problems.push(Problem::Conflict {
                        detail: format!(
                            "{} of {} already produced {:?} before {} at {:?} was built, and that replacement's transforms change how those keys convert; build replacements before their weights are requested",
                            converter.compiled.describe(),
                            converter.owner,
                            old.targets(),
                            name,
                            prefix
                        ),
                    })
                }
            }
        }
    }

    /// Scopes covering `name`, outermost first.
    pub(super) fn covering(&self, name: &str) -> Vec<ScopeId> {
        let mut v: Vec<ScopeId> = self
            .scopes
            .iter()
            .filter(|(_, s)| under(name, &s.prefix))
            .map(|(i, _)| i)
            .collect();
        v.sort_by_key(|&i| self.scopes[i].prefix.len());
        v
    }
}
