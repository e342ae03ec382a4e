//! Claim-and-group, shared by loading and saving: names are offered to converters in order,
//! the first converter with a matching pattern claims a name, and claims are grouped into
//! units by converter and by what the match left around the pattern.
//!
//! Loading claims checkpoint keys by the converters' source patterns; saving claims
//! parameter names by their target patterns (the same grouping, run in reverse).

use std::collections::HashMap;

use crate::convert::{CompiledConverter, ListSide};

/// Which patterns of a converter claim names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Source patterns: checkpoint keys, at load.
    Sources,
    /// Target patterns: model names, at save.
    Targets,
}

impl Side {
    /// Whether, on this side, the converter's last `*` indexes a module list.
    fn indexes_list(self, converter: &CompiledConverter) -> bool {
        match self {
            Side::Sources => converter.list == ListSide::Sources,
            Side::Targets => converter.list == ListSide::Targets,
        }
    }
}

/// What identifies one unit: the converter, the text around the match, and the module-list
/// indices the match captured (without the list index of a list side).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey<C> {
    /// The converter that claimed.
    pub converter: C,
    /// The text before the pattern.
    pub prefix: String,
    /// The text after the pattern.
    pub suffix: String,
    /// The captured indices that are not the list index.
    pub captures: Vec<usize>,
}

/// One claimed name in a group: which pattern matched, at which list index.
#[derive(Clone, Debug)]
pub(crate) struct Member<M> {
    /// The index of the matching pattern on the claiming side.
    pub pattern: usize,
    /// The module-list index, when that side indexes a list.
    pub list_index: Option<usize>,
    /// What the caller claimed (a key, a parameter).
    pub item: M,
}

/// Names claimed by one converter with the same [`GroupKey`]: one unit.
#[derive(Debug)]
pub(crate) struct Group<C, M> {
    /// What the members share.
    pub key: GroupKey<C>,
    /// The members, in claim order.
    pub members: Vec<Member<M>>,
}

impl<C, M> Group<C, M> {
    /// The members per pattern (`patterns` of them), each sorted by list index.
    pub fn by_pattern(&self, patterns: usize) -> Vec<Vec<(usize, &M)>> {
        let mut per: Vec<Vec<(usize, &M)>> = (0..patterns).map(|_| Vec::new()).collect();
        for m in &self.members {
            if let Some(entries) = per.get_mut(m.pattern) {
                entries.push((m.list_index.unwrap_or(0), &m.item));
            }
        }
        for entries in &mut per {
            entries.sort_by_key(|(i, _)| *i);
        }
        per
    }
}

/// Claims made so far, grouped (groups in the order they were first claimed into).
pub(crate) struct Claims<C, M> {
    side: Side,
    groups: Vec<Group<C, M>>,
    index: HashMap<GroupKey<C>, usize>,
}

impl<C: Clone + Eq + std::hash::Hash, M> Claims<C, M> {
    /// No claims yet, made with `side`'s patterns.
    pub fn new(side: Side) -> Self {
        Self {
            side,
            groups: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Offers `name` to `converters` in order: the first with a pattern matching `name`
    /// claims it for `item`. Gives `item` back when none does.
    pub fn offer<'c>(
        &mut self,
        name: &str,
        item: M,
        converters: impl IntoIterator<Item = (C, &'c CompiledConverter)>,
    ) -> Result<(), M> {
        for (id, converter) in converters {
            let patterns = match self.side {
                Side::Sources => &converter.sources,
                Side::Targets => &converter.targets,
            };
            for (pattern, p) in patterns.iter().enumerate() {
                let Some(m) = p.find(name) else { continue };
                let mut captures = m.captures;
                let list_index = if self.side.indexes_list(converter) {
                    captures.pop()
                } else {
                    None
                };
                let key = GroupKey {
                    converter: id,
                    prefix: m.prefix,
                    suffix: m.suffix,
                    captures,
                };
                let g = match self.index.get(&key) {
                    Some(&g) => g,
                    None => {
                        self.index.insert(key.clone(), self.groups.len());
                        self.groups.push(Group {
                            key,
                            members: Vec::new(),
                        });
                        self.groups.len() - 1
                    }
                };
                self.groups[g].members.push(Member {
                    pattern,
                    list_index,
                    item,
                });
                return Ok(());
            }
        }
        Err(item)
    }

    /// The groups, in the order they were first claimed into.
    pub fn into_groups(self) -> Vec<Group<C, M>> {
        self.groups
    }
}
