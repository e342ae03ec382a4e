//! Replacements: a type that fills a slot, erased so the registry can hold any of them.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

use patch_checkpoint::Transform;

use crate::{Build, Builder, Result, Slot};

/// The constructor of one slot's modules, erased behind `dyn Any` in [`Replacement`].
pub(crate) struct Factory<S: Slot + ?Sized> {
    pub(crate) build: for<'a> fn(&Builder, S::Args<'a>) -> Result<Box<S>>,
}

/// A replacement type, ready to be registered under a key: what it is called, which slot it
/// fills, how to build it, and the weight transforms it carries.
///
/// ```
/// # use patch_core::{Build, Builder, Module, Result, Slot};
/// # pub trait Attention: Module {}
/// # impl Slot for dyn Attention { const NAME: &'static str = "Attention"; type Args<'a> = (); }
/// # pub struct CustomLlamaAttention;
/// # impl Attention for CustomLlamaAttention {}
/// # impl Build for CustomLlamaAttention {
/// #     type Slot = dyn Attention;
/// #     fn build(_: &Builder, _: ()) -> Result<Box<dyn Attention>> { Ok(Box::new(CustomLlamaAttention)) }
/// # }
/// use patch_core::{register_patch_mapping, Replacement};
///
/// let custom = Replacement::of::<CustomLlamaAttention>();
/// assert_eq!(custom.slot(), "Attention");
/// register_patch_mapping([("LlamaAttention", custom)], false)?;
/// # patch_core::clear_patch_mapping();
/// # Ok::<(), patch_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Replacement {
    type_name: &'static str,
    type_id: TypeId,
    slot: &'static str,
    slot_id: TypeId,
    priority: i32,
    factory: Arc<dyn Any + Send + Sync>,
    transforms: fn() -> Vec<Transform>,
}

impl Replacement {
    /// The replacement built by `T` (priority 0).
    pub fn of<T: Build>() -> Self {
        Replacement {
            type_name: std::any::type_name::<T>(),
            type_id: TypeId::of::<T>(),
            slot: <T::Slot as Slot>::NAME,
            slot_id: TypeId::of::<T::Slot>(),
            priority: 0,
            factory: Arc::new(Factory::<T::Slot> { build: T::build }),
            transforms: T::transforms,
        }
    }

    /// The same replacement with another priority: among patterns matching one site, the
    /// higher priority wins (see [`crate::matching`]).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The replacement type's full name.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// The replacement type's name without its module path.
    pub fn short_name(&self) -> String {
        short_type_name(self.type_name)
    }

    /// The identity of the replacement type.
    pub fn type_id(&self) -> TypeId {
        self.type_id
    }

    /// The name of the slot it fills.
    pub fn slot(&self) -> &'static str {
        self.slot
    }

    /// The identity of the slot it fills.
    pub fn slot_id(&self) -> TypeId {
        self.slot_id
    }

    /// Its priority.
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// The weight transforms it carries.
    pub fn transforms(&self) -> Vec<Transform> {
        (self.transforms)()
    }

    /// Its constructor for slot `S`, if it fills `S`.
    pub(crate) fn factory<S: Slot + ?Sized>(&self) -> Option<&Factory<S>> {
        self.factory.downcast_ref::<Factory<S>>()
    }
}

impl fmt::Debug for Replacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replacement")
            .field("type", &self.type_name)
            .field("slot", &self.slot)
            .field("priority", &self.priority)
            .finish()
    }
}

/// `a::b::C<d::E>` -> `C<d::E>`: the last path segment outside generic arguments.
pub(crate) fn short_type_name(full: &str) -> String {
    // Every path in the name, generic arguments included, cut to its last segment:
    // `a::QuantizedMlp<a::b::Q8_0>` -> `QuantizedMlp<Q8_0>`.
    let mut out = String::with_capacity(full.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        out.push_str(token.rsplit("::").next().unwrap_or(token));
        token.clear();
    };
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}
