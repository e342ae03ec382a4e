//! Replacements: a type that fills a slot, erased so the registry can hold any of them.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

use patch_checkpoint::Transform;

use crate::{Build, Builder, Result, Slot};

/// A constructor of one slot's modules: a type's `Build::build`, or a closure holding what a
/// replacement is configured with.
pub(crate) type BuildFn<S> =
    Arc<dyn for<'a> Fn(&Builder, <S as Slot>::Args<'a>) -> Result<Box<S>> + Send + Sync>;

/// The constructor of one slot's modules, erased behind `dyn Any` in [`Replacement`].
pub(crate) struct Factory<S: Slot + ?Sized> {
    pub(crate) build: BuildFn<S>,
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
    transforms: Arc<dyn Fn() -> Vec<Transform> + Send + Sync>,
    label: Option<Arc<str>>,
}

impl Replacement {
    /// The replacement built by `T` (priority 0).
    pub fn of<T: Build>() -> Self {
        let build: BuildFn<T::Slot> = Arc::new(T::build);
        Replacement {
            type_name: std::any::type_name::<T>(),
            type_id: TypeId::of::<T>(),
            slot: <T::Slot as Slot>::NAME,
            slot_id: TypeId::of::<T::Slot>(),
            priority: 0,
            factory: Arc::new(Factory::<T::Slot> { build }),
            transforms: Arc::new(T::transforms),
            label: None,
        }
    }

    /// A replacement of type `T` configured at run time: `build` holds what it is configured
    /// with (a quantization topology, an adapter's weights, a rank's shard) and builds `T`'s
    /// modules, boxed as `T`'s slot. `label` names the configuration in `explain` and reports
    /// (`QuantizedProjection (q4k)`); two replacements of one type with different labels are
    /// different replacements. `T`'s own [`Build::transforms`] are carried.
    ///
    /// ```
    /// # use patch_core::{Build, Builder, Module, Result, Slot, Replacement};
    /// # pub trait Scale: Module { fn factor(&self) -> f64; }
    /// # impl Slot for dyn Scale { const NAME: &'static str = "Scale"; type Args<'a> = (); }
    /// pub struct Scaled(f64);
    /// # impl Scale for Scaled { fn factor(&self) -> f64 { self.0 } }
    /// impl Build for Scaled {
    ///     type Slot = dyn Scale;
    ///     fn build(_: &Builder, _: ()) -> Result<Box<dyn Scale>> { Ok(Box::new(Scaled(1.0))) }
    /// }
    /// let factor = 0.5;
    /// let half = Replacement::configured::<Scaled>("x0.5", move |_, _| Ok(Box::new(Scaled(factor))));
    /// assert_eq!(half.short_name(), "Scaled (x0.5)");
    /// ```
    pub fn configured<T: Build>(
        label: impl Into<String>,
        build: impl for<'a> Fn(&Builder, <T::Slot as Slot>::Args<'a>) -> Result<Box<T::Slot>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        let build: BuildFn<T::Slot> = Arc::new(build);
        Replacement {
            factory: Arc::new(Factory::<T::Slot> { build }),
            label: Some(Arc::from(label.into())),
            ..Self::of::<T>()
        }
    }

    /// The same replacement carrying `transforms` instead of its type's.
    pub fn with_transforms(mut self, transforms: Vec<Transform>) -> Self {
        self.transforms = Arc::new(move || transforms.clone());
        self
    }

    /// The label of a [`Replacement::configured`] replacement.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
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

    /// The replacement type's name without its module path, with its label if it has one.
    pub fn short_name(&self) -> String {
        match &self.label {
            Some(label) => format!("{} ({label})", short_type_name(self.type_name)),
            None => short_type_name(self.type_name),
        }
    }

    /// Whether `other` builds the same thing: the same type with the same label.
    pub(crate) fn same_as(&self, other: &Replacement) -> bool {
        self.type_id == other.type_id && self.label == other.label
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
    pub(crate) fn build_fn<S: Slot + ?Sized>(&self) -> Option<BuildFn<S>> {
        self.factory::<S>().map(|f| f.build.clone())
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
            .field("label", &self.label)
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
