//! Values a caller hands one forward pass, for the modules that read them: which adapter a
//! LoRA projection applies on this call, say. The model itself reads none of them.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A set of values keyed by their type, at most one per type, handed to a forward pass
/// ([`ForwardOptions::extensions`](crate::ForwardOptions::extensions)) and read by modules
/// through [`PassContext::extension`](crate::decoder::PassContext::extension). A crate of
/// patches defines its own type for what a caller may choose per call, so two crates never
/// read each other's values.
///
/// ```
/// use patchwork_models::decoder::Extensions;
///
/// #[derive(Debug, PartialEq)]
/// struct Temperature(f32);
///
/// let extensions = Extensions::new().with(Temperature(0.5));
/// assert_eq!(extensions.get::<Temperature>(), Some(&Temperature(0.5)));
/// assert_eq!(extensions.get::<String>(), None);
/// ```
#[derive(Clone, Default)]
pub struct Extensions {
    values: BTreeMap<TypeId, (&'static str, Arc<dyn Any + Send + Sync>)>,
}

impl Extensions {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// These values with `value`, replacing one of the same type.
    pub fn with<T: Any + Send + Sync>(mut self, value: T) -> Self {
        self.insert(value);
        self
    }

    /// Adds `value`, replacing one of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.values.insert(
            TypeId::of::<T>(),
            (std::any::type_name::<T>(), Arc::new(value)),
        );
    }

    /// The value of type `T`, if one was given.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|(_, value)| value.downcast_ref::<T>())
    }

    /// Whether no value was given.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.values.values().map(|(name, _)| name))
            .finish()
    }
}
