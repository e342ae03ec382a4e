//! A set of named implementations of one kind (attention, or experts): the global ones
//! (built-ins, link-time entries, run-time registrations), each kind holding one.

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
