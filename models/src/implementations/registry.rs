//! The named implementations a model resolves against: the global ones (built-ins, link-time
//! entries, run-time registrations) and a model's own.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::{Error, Result};

/// A set of named implementations of one kind (attention, or experts).
#[derive(Debug)]
pub(crate) struct Named<T> {
    what: &'static str,
    by_name: RwLock<BTreeMap<String, Arc<T>>>,
}

impl<T> Named<T> {
    pub(crate) fn new(
        what: &'static str,
        entries: impl IntoIterator<Item = (String, Arc<T>)>,
    ) -> Self {
        Self {
            what,
            by_name: RwLock::new(entries.into_iter().collect()),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<T>> {
        self.by_name
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.by_name
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Adds `imp` under `name`; an error if the name is taken and `overwrite` is false.
    pub(crate) fn register(&self, name: &str, imp: Arc<T>, overwrite: bool) -> Result<()> {
        let mut map = self.by_name.write().unwrap_or_else(PoisonError::into_inner);
        if !overwrite && map.contains_key(name) {
            return Err(Error::input(
                self.what,
                format!("{name:?} is already registered; pass overwrite = true to replace it"),
            ));
        }
        map.insert(name.to_string(), imp);
        Ok(())
    }

    /// The error for an unknown name, listing the registered ones (and `extra`, a model's own).
    pub(crate) fn unknown(&self, name: &str, extra: &[String]) -> Error {
        let mut names = self.names();
        names.extend(extra.iter().cloned());
        names.sort();
        names.dedup();
        Error::input(
            self.what,
            format!(
                "unknown implementation {name:?} (registered: {})",
                names.join(", ")
            ),
        )
    }
}

/// The implementations a model computes with, and the ones registered for it alone.
#[derive(Clone, Debug)]
pub struct Implementations {
    pub(crate) attention: Arc<super::AttentionImplementation>,
    pub(crate) experts: Arc<super::ExpertsImplementation>,
    pub(crate) local_attention: BTreeMap<String, Arc<super::AttentionImplementation>>,
    pub(crate) local_experts: BTreeMap<String, Arc<super::ExpertsImplementation>>,
}

impl Implementations {
    /// The named attention and experts implementations (a model's own registrations first,
    /// then the global ones); an error lists the registered names for an unknown one.
    pub(crate) fn resolve(attention: &str, experts: &str) -> Result<Self> {
        let mut out = Self::default();
        out.set_attention(attention)?;
        out.set_experts(experts)?;
        Ok(out)
    }

    /// Selects attention implementation `name`.
    pub(crate) fn set_attention(&mut self, name: &str) -> Result<()> {
        self.attention = match self.local_attention.get(name) {
            Some(imp) => imp.clone(),
            None => super::attention::global().get(name).ok_or_else(|| {
                let own: Vec<String> = self.local_attention.keys().cloned().collect();
                super::attention::global().unknown(name, &own)
            })?,
        };
        Ok(())
    }

    /// Selects experts implementation `name`.
    pub(crate) fn set_experts(&mut self, name: &str) -> Result<()> {
        self.experts = match self.local_experts.get(name) {
            Some(imp) => imp.clone(),
            None => super::experts::global().get(name).ok_or_else(|| {
                let own: Vec<String> = self.local_experts.keys().cloned().collect();
                super::experts::global().unknown(name, &own)
            })?,
        };
        Ok(())
    }

    /// The selected attention implementation.
    pub fn attention(&self) -> &Arc<super::AttentionImplementation> {
        &self.attention
    }

    /// The selected experts implementation.
    pub fn experts(&self) -> &Arc<super::ExpertsImplementation> {
        &self.experts
    }
}

impl Default for Implementations {
    /// `"sdpa"` attention and `"grouped_mm"` experts, the fast CPU paths.
    fn default() -> Self {
        Self {
            attention: super::attention::sdpa(),
            experts: super::experts::grouped_mm(),
            local_attention: BTreeMap::new(),
            local_experts: BTreeMap::new(),
        }
    }
}
