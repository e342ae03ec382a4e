//! The name-level load plan: which checkpoint keys serve which requested names.
//!
//! Planning touches names and header shapes only, never tensor data:
//!
//! 1. Every key goes through the registry's renamings (in order), giving its *base* name.
//! 2. The renamings of every replacement scope whose prefix covers the name apply next, outer
//!    scopes first, giving the key's *effective* name: the model's namespace.
//! 3. Converters claim keys by effective name: the innermost scope's converters first, then
//!    outer scopes', then the registry's; the first source pattern that matches wins.
//! 4. Keys claimed by one converter are grouped into units by target names; a unit's shapes
//!    are planned from the headers, so a mis-fitting conversion is known before any read.
//!
//! A request is served by the unit that produces its name, else by the key whose effective
//! name it is. Scopes are learnt from requests (a replacement's transforms arrive with the
//! requests made under its path); a new scope re-plans the keys under its prefix, and a
//! conversion that already ran and would now change is reported as a conflict.

use std::collections::HashMap;
use std::sync::Arc;

use crate::accounting::Problem;
use crate::convert::{CompiledConverter, ListSide, UnitShapes};
use crate::ops::{Shapes, Slot};
use crate::origin::UnitOrigin;
use crate::rename::CompiledRenaming;
use crate::safetensors_io::{TensorMeta, candle_dtype};
use crate::{Transform, TransformScope};

/// One checkpoint key.
#[derive(Debug)]
pub(crate) struct Key {
    /// As named in its file.
    pub original: String,
    pub file: usize,
    pub meta: TensorMeta,
    /// After the registry's renamings.
    pub base: String,
    /// After scoped renamings too: the model's name for it.
    pub name: String,
    /// Renamings that changed it, in order (description, owner).
    pub renamed_by: Vec<(usize, String)>,
    /// The unit that claims it, if any.
    pub unit: Option<usize>,
    /// Times it was read for a request (directly or through its unit).
    pub consumed: usize,
}

/// A converter and who supplied it.
#[derive(Debug)]
pub(crate) struct Conv {
    pub compiled: CompiledConverter,
    /// `registry`, or the carrying replacement and its path.
    pub owner: String,
    /// `registry`, or the carrying replacement (for reports that merge its paths).
    pub who: &'static str,
    pub units_run: usize,
}

/// A renaming and who supplied it.
#[derive(Debug)]
pub(crate) struct Ren {
    pub compiled: CompiledRenaming,
    pub owner: String,
    pub who: &'static str,
}

/// Transforms carried by a replacement, learnt from requests.
#[derive(Debug)]
pub(crate) struct Scope {
    pub prefix: String,
    pub owner: &'static str,
    /// Kept alive so its address identifies it.
    pub transforms: Arc<[Transform]>,
    pub renamings: Vec<usize>,
    pub converters: Vec<usize>,
}

/// Keys grouped under one converter, producing one set of targets.
#[derive(Debug)]
pub(crate) struct Unit {
    pub conv: usize,
    /// Key indices per source slot (lists in index order).
    pub slots: Vec<Slot<usize>>,
    /// Target names, flattened in output order (empty if the plan failed).
    pub targets: Vec<String>,
    pub plan: Result<UnitShapes, String>,
    pub runs: usize,
    /// Which outputs were handed out.
    pub served: Vec<bool>,
    /// Provenance, made on first run.
    pub origin: Option<Arc<UnitOrigin>>,
}

impl Unit {
    fn same_as(&self, other: &Unit) -> bool {
        self.conv == other.conv && self.slots == other.slots && self.targets == other.targets
    }

    /// The keys the unit reads.
    pub fn keys(&self) -> Vec<usize> {
        self.slots
            .iter()
            .flat_map(|s| s.items().into_iter().copied())
            .collect()
    }
}

/// The plan of one checkpoint source.
#[derive(Debug)]
pub(crate) struct Plan {
    pub keys: Vec<Key>,
    pub convs: Vec<Conv>,
    pub rens: Vec<Ren>,
    registry_convs: Vec<usize>,
    pub scopes: Vec<Scope>,
    pub units: Vec<Option<Unit>>,
    /// Target name -> (unit, output index).
    pub by_target: HashMap<String, (usize, usize)>,
    /// Effective name -> key.
    pub raw: HashMap<String, usize>,
    /// Problems found while planning.
    pub problems: Vec<Problem>,
}

pub(crate) fn under(name: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || (name.starts_with(prefix)
            && (name.len() == prefix.len() || name.as_bytes()[prefix.len()] == b'.'))
}

/// A converter's claim on a key.
struct Claim {
    conv: usize,
    source: usize,
    prefix: String,
    suffix: String,
    unit_caps: Vec<usize>,
    list_index: Option<usize>,
}

impl Plan {
    /// Plans `keys` (original name, file, meta) under the registry's `transforms`.
    pub fn new(
        keys: Vec<(String, usize, TensorMeta)>,
        transforms: &[Transform],
    ) -> crate::Result<Self> {
        let mut plan = Plan {
            keys: Vec::with_capacity(keys.len()),
            convs: Vec::new(),
            rens: Vec::new(),
            registry_convs: Vec::new(),
            scopes: Vec::new(),
            units: Vec::new(),
            by_target: HashMap::new(),
            raw: HashMap::new(),
            problems: Vec::new(),
        };
        let mut registry_rens = Vec::new();
        for t in transforms {
            match t {
                Transform::Renaming(r) => {
                    registry_rens.push(plan.rens.len());
                    plan.rens.push(Ren {
                        compiled: CompiledRenaming::new(r)?,
                        owner: "registry".into(),
                        who: "registry",
                    });
                }
                Transform::Converter(c) => {
                    plan.registry_convs.push(plan.convs.len());
                    plan.convs.push(Conv {
                        compiled: CompiledConverter::new(c)?,
                        owner: "registry".into(),
                        who: "registry",
                        units_run: 0,
                    });
                }
            }
        }
        for (original, file, meta) in keys {
            let mut base = original.clone();
            let mut renamed_by = Vec::new();
            for &r in &registry_rens {
                let next = plan.rens[r].compiled.forward(&base).into_owned();
                if next != base {
                    renamed_by.push((r, plan.rens[r].compiled.describe()));
                    base = next;
                }
            }
            plan.keys.push(Key {
                original,
                file,
                meta,
                name: base.clone(),
                base,
                renamed_by,
                unit: None,
                consumed: 0,
            });
        }
        let all: Vec<usize> = (0..plan.keys.len()).collect();
        plan.assign(&all);
        Ok(plan)
    }

    /// Learns the scopes of a request; returns whether anything was re-planned.
    pub fn learn_scopes(&mut self, scopes: &[TransformScope]) {
        for s in scopes {
            let known = self.scopes.iter().any(|k| {
                Arc::ptr_eq(&k.transforms, &s.transforms)
                    || (k.prefix == s.prefix
                        && k.owner == s.owner
                        && *k.transforms == *s.transforms)
            });
            if !known {
                self.add_scope(s);
            }
        }
    }

    fn add_scope(&mut self, s: &TransformScope) {
        let owner = format!("{} at {:?}", s.owner, s.prefix);
        let mut renamings = Vec::new();
        let mut converters = Vec::new();
        for t in s.transforms.iter() {
            let result = match t {
                Transform::Renaming(r) => CompiledRenaming::new(r).map(|compiled| {
                    renamings.push(self.rens.len());
                    self.rens.push(Ren {
                        compiled,
                        owner: owner.clone(),
                        who: s.owner,
                    });
                }),
                Transform::Converter(c) => CompiledConverter::new(c).map(|compiled| {
                    converters.push(self.convs.len());
                    self.convs.push(Conv {
                        compiled,
                        owner: owner.clone(),
                        who: s.owner,
                        units_run: 0,
                    });
                }),
            };
            if let Err(e) = result {
                self.problems.push(Problem::InvalidTransform {
                    owner: owner.clone(),
                    message: e.to_string(),
                });
            }
        }
        self.scopes.push(Scope {
            prefix: s.prefix.clone(),
            owner: s.owner,
            transforms: s.transforms.clone(),
            renamings,
            converters,
        });
        if self
            .scopes
            .last()
            .is_some_and(|s| s.renamings.is_empty() && s.converters.is_empty())
        {
            return;
        }
        // Re-plan the keys under the prefix, with every unit they belong to.
        let prefix = s.prefix.clone();
        let mut affected: Vec<usize> = (0..self.keys.len())
            .filter(|&k| under(&self.keys[k].base, &prefix) || under(&self.keys[k].name, &prefix))
            .collect();
        let mut old_units = Vec::new();
        for &k in &affected {
            if let Some(u) = self.keys[k].unit
                && !old_units.contains(&u)
            {
                old_units.push(u);
            }
        }
        let mut removed = Vec::new();
        for &u in &old_units {
            if let Some(unit) = self.units[u].take() {
                for t in &unit.targets {
                    if self.by_target.get(t).is_some_and(|(x, _)| *x == u) {
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
            let name = &self.keys[k].name;
            if self.raw.get(name) == Some(&k) {
                self.raw.remove(name);
            }
            self.keys[k].unit = None;
        }
        affected.sort_unstable();
        let new_units = self.assign(&affected);
        for old in removed.into_iter().filter(|u| u.runs > 0) {
            let same = new_units
                .iter()
                .find(|&&n| self.units[n].as_ref().is_some_and(|u| u.same_as(&old)));
            match same {
                Some(&n) => {
                    if let Some(unit) = self.units[n].as_mut() {
                        unit.runs = old.runs;
                        unit.served = old.served;
                        unit.origin = old.origin;
                    }
                }
                None => self.problems.push(Problem::Conflict {
                    detail: format!(
                        "{} of {} already produced {:?} before {} at {:?} was built, and that replacement's transforms change how those keys convert; build replacements before their weights are requested",
                        self.convs[old.conv].compiled.describe(),
                        self.convs[old.conv].owner,
                        old.targets,
                        s.owner,
                        s.prefix
                    ),
                }),
            }
        }
    }

    /// Scopes covering `name`, outermost first.
    fn covering(&self, name: &str) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.scopes.len())
            .filter(|&i| under(name, &self.scopes[i].prefix))
            .collect();
        v.sort_by_key(|&i| self.scopes[i].prefix.len());
        v
    }

    /// Computes effective names and converter claims for `keys`, groups them into units and
    /// indexes them. Returns the new units.
    fn assign(&mut self, keys: &[usize]) -> Vec<usize> {
        let mut claims: Vec<(usize, Claim)> = Vec::new();
        for &k in keys {
            // Scoped renamings, outer scopes first.
            let mut name = self.keys[k].base.clone();
            let mut chain: Vec<(usize, String)> = self.keys[k]
                .renamed_by
                .iter()
                .filter(|(r, _)| self.rens[*r].owner == "registry")
                .cloned()
                .collect();
            for s in self.covering(&name) {
                if !under(&name, &self.scopes[s].prefix) {
                    continue;
                }
                for &r in &self.scopes[s].renamings {
                    let next = self.rens[r].compiled.forward(&name).into_owned();
                    if next != name {
                        if !under(&next, &self.scopes[s].prefix) {
                            self.problems.push(Problem::Conflict {
                                detail: format!(
                                    "{} carried by {} renames {name:?} to {next:?}, outside its path",
                                    self.rens[r].compiled.describe(),
                                    self.rens[r].owner
                                ),
                            });
                            continue;
                        }
                        chain.push((
                            r,
                            format!(
                                "{} ({})",
                                self.rens[r].compiled.describe(),
                                self.rens[r].owner
                            ),
                        ));
                        name = next;
                    }
                }
            }
            self.keys[k].name = name.clone();
            self.keys[k].renamed_by = chain;
            match self.raw.get(&name) {
                Some(&other) if other != k => self.problems.push(Problem::Conflict {
                    detail: format!(
                        "checkpoint keys {:?} and {:?} both load as {name:?}",
                        self.keys[other].original, self.keys[k].original
                    ),
                }),
                _ => {
                    self.raw.insert(name.clone(), k);
                }
            }
            // Converters: innermost scope first, then the registry's.
            let mut order: Vec<usize> = Vec::new();
            for s in self.covering(&name).into_iter().rev() {
                order.extend(&self.scopes[s].converters);
            }
            order.extend(&self.registry_convs);
            'convs: for c in order {
                let conv = &self.convs[c].compiled;
                for (i, pat) in conv.sources.iter().enumerate() {
                    if let Some(m) = pat.find(&name) {
                        let (unit_caps, list_index) = if conv.list == ListSide::Sources {
                            let mut caps = m.captures.clone();
                            let last = caps.pop();
                            (caps, last)
                        } else {
                            (m.captures.clone(), None)
                        };
                        claims.push((
                            k,
                            Claim {
                                conv: c,
                                source: i,
                                prefix: m.prefix,
                                suffix: m.suffix,
                                unit_caps,
                                list_index,
                            },
                        ));
                        break 'convs;
                    }
                }
            }
        }
        // Group claims into units.
        type GroupKey = (usize, String, String, Vec<usize>);
        let mut groups: Vec<(GroupKey, Vec<(usize, Claim)>)> = Vec::new();
        let mut index: HashMap<GroupKey, usize> = HashMap::new();
        for (k, c) in claims {
            let gk = (
                c.conv,
                c.prefix.clone(),
                c.suffix.clone(),
                c.unit_caps.clone(),
            );
            let g = *index.entry(gk.clone()).or_insert_with(|| {
                groups.push((gk, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push((k, c));
        }
        let mut new_units = Vec::new();
        for ((conv, prefix, suffix, unit_caps), members) in groups {
            let unit = self.make_unit(conv, &prefix, &suffix, &unit_caps, members);
            let u = self.units.len();
            for k in unit.keys() {
                self.keys[k].unit = Some(u);
            }
            for (i, t) in unit.targets.iter().enumerate() {
                if let Some(&(other, _)) = self.by_target.get(t) {
                    let other_desc = self.units[other]
                        .as_ref()
                        .map(|o| {
                            format!(
                                "{} ({})",
                                self.convs[o.conv].compiled.describe(),
                                self.convs[o.conv].owner
                            )
                        })
                        .unwrap_or_default();
                    self.problems.push(Problem::Conflict {
                        detail: format!(
                            "{t:?} is produced by both {other_desc} and {} ({}); the first is used",
                            self.convs[conv].compiled.describe(),
                            self.convs[conv].owner
                        ),
                    });
                } else {
                    self.by_target.insert(t.clone(), (u, i));
                }
            }
            self.units.push(Some(unit));
            new_units.push(u);
        }
        new_units
    }

    fn make_unit(
        &self,
        conv: usize,
        prefix: &str,
        suffix: &str,
        unit_caps: &[usize],
        members: Vec<(usize, Claim)>,
    ) -> Unit {
        let c = &self.convs[conv].compiled;
        let list = c.list == ListSide::Sources;
        let mut slots: Vec<Vec<(usize, usize)>> = vec![Vec::new(); c.sources.len()];
        for (k, claim) in &members {
            slots[claim.source].push((claim.list_index.unwrap_or(0), *k));
        }
        let mut problem: Option<String> = None;
        let mut key_slots = Vec::with_capacity(slots.len());
        for (i, mut entries) in slots.into_iter().enumerate() {
            entries.sort_unstable();
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
                key_slots.push(Slot::Many(Vec::new()));
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
                key_slots.push(Slot::Many(entries.into_iter().map(|(_, k)| k).collect()));
            } else {
                if entries.len() > 1 {
                    problem
                        .get_or_insert(format!("several keys match {:?} here", c.sources[i].text));
                }
                key_slots.push(Slot::One(entries[0].1));
            }
        }
        if problem.is_none() && list {
            let lens: Vec<usize> = key_slots.iter().map(|s| s.items().len()).collect();
            if lens.iter().any(|&n| n != lens[0]) {
                problem = Some(format!("module lists of different lengths {lens:?}"));
            }
        }
        let plan = match problem {
            Some(p) => Err(p),
            None => {
                let inputs: Shapes = key_slots
                    .iter()
                    .map(|s| match s {
                        Slot::One(k) => Slot::One(self.keys[*k].meta.shape.clone()),
                        Slot::Many(v) => {
                            Slot::Many(v.iter().map(|k| self.keys[*k].meta.shape.clone()).collect())
                        }
                    })
                    .collect();
                c.plan_forward(inputs)
            }
        };
        let targets = match &plan {
            Ok(shapes) => shapes
                .outputs()
                .iter()
                .enumerate()
                .flat_map(|(j, slot)| match slot {
                    Slot::One(_) => {
                        vec![format!("{prefix}{}{suffix}", c.targets[j].fill(unit_caps))]
                    }
                    Slot::Many(items) => (0..items.len())
                        .map(|i| {
                            let mut caps = unit_caps.to_vec();
                            caps.push(i);
                            format!("{prefix}{}{suffix}", c.targets[j].fill(&caps))
                        })
                        .collect(),
                })
                .collect(),
            Err(_) if c.list != ListSide::Targets => c
                .targets
                .iter()
                .map(|t| format!("{prefix}{}{suffix}", t.fill(unit_caps)))
                .collect(),
            Err(_) => Vec::new(),
        };
        Unit {
            conv,
            served: vec![false; targets.len()],
            slots: key_slots,
            targets,
            plan,
            runs: 0,
            origin: None,
        }
    }

    /// The flattened output shapes of a planned unit.
    pub fn output_shapes(unit: &Unit) -> Vec<Vec<usize>> {
        match &unit.plan {
            Ok(p) => p
                .outputs()
                .iter()
                .flat_map(|s| s.items().into_iter().cloned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Provenance of a unit (built once).
    pub fn unit_origin(&mut self, u: usize) -> Option<Arc<UnitOrigin>> {
        let unit = self.units.get(u)?.as_ref()?;
        if let Some(o) = &unit.origin {
            return Some(o.clone());
        }
        let shapes = unit.plan.as_ref().ok()?.clone();
        let sources = unit
            .slots
            .iter()
            .map(|s| {
                s.as_ref().map(|&k| {
                    let key = &self.keys[k];
                    candle_dtype(key.meta.dtype)
                        .map(|d| (key.original.clone(), d))
                        .ok_or(())
                })
            })
            .collect::<Result<Vec<_>, ()>>()
            .ok()?;
        let origin = Arc::new(UnitOrigin {
            description: self.describe_unit(unit),
            sources,
            shapes,
            targets: unit.targets.clone(),
        });
        if let Some(unit) = self.units[u].as_mut() {
            unit.origin = Some(origin.clone());
        }
        Some(origin)
    }

    /// `WeightConverter(...) (owner)`.
    pub fn describe_unit(&self, unit: &Unit) -> String {
        let c = &self.convs[unit.conv];
        format!("{} ({})", c.compiled.describe(), c.owner)
    }

    /// Keys renamed by each renaming (what the report counts).
    pub fn renamed_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.rens.len()];
        for key in &self.keys {
            for (r, _) in &key.renamed_by {
                counts[*r] += 1;
            }
        }
        counts
    }

    /// How a key got its name: ` (loads as X via WeightRenaming(...))`, or empty.
    pub fn rename_chain(&self, k: usize) -> String {
        let key = &self.keys[k];
        if key.renamed_by.is_empty() {
            return String::new();
        }
        let chain: Vec<&str> = key.renamed_by.iter().map(|(_, d)| d.as_str()).collect();
        format!("loads as {:?} via {}", key.name, chain.join(" then "))
    }
}
