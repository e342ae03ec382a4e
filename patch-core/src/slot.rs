//! Slots (the contract a site fills) and the construction trait every site and replacement
//! implements.

use std::any::Any;

use patch_checkpoint::Transform;

use crate::{Builder, ObservedSite, Result};

/// The contract a site fills: implemented for the trait object its parent stores
/// (`impl Slot for dyn Attention`), it names the arguments every constructor of that slot
/// receives. Sites sharing a slot can all be served by one replacement.
///
/// ```
/// use patch_core::{Module, Slot};
///
/// /// What a decoder layer asks of its attention.
/// pub trait Attention: Module {
///     fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>;
/// }
///
/// /// What every attention constructor receives besides its weights.
/// pub struct AttentionArgs<'a> {
///     pub hidden_size: usize,
///     pub layer_idx: usize,
///     pub name: &'a str,
/// }
///
/// impl Slot for dyn Attention {
///     const NAME: &'static str = "Attention";
///     type Args<'a> = AttentionArgs<'a>;
/// }
/// ```
pub trait Slot: 'static {
    /// The slot's name in reports (`"Attention"`).
    const NAME: &'static str;
    /// The constructor arguments besides the [`Builder`] (config view, layer index, ...).
    type Args<'a>;

    /// What [`Builder::build`] hands back for a module built at `site`: the module itself by
    /// default; a slot whose outputs a model records per forward pass wraps it in an
    /// [`Observed`](crate::Observed) that implements the slot trait (see there).
    fn observe(module: Box<Self>, site: ObservedSite) -> Box<Self> {
        let _ = site;
        module
    }
}

/// The base of every slot trait: a built module reports its concrete type and can be
/// downcast, whatever trait object it is stored as.
///
/// Implemented for every `Send + Sync` type that implements [`Build`] (every site and
/// replacement), and for nothing else: in particular not for `Box<dyn Attention>`, so
/// `layer.self_attn.type_name()` on a boxed slot names the module inside, not the box.
pub trait Module: Any + Send + Sync {
    /// The concrete type's name (`my_crate::CustomLlamaAttention`).
    fn type_name(&self) -> &'static str;

    /// The module as `&dyn Any`, for downcasting (see [`ModuleExt`]).
    fn as_any(&self) -> &dyn Any;

    /// The module as `&mut dyn Any`.
    fn as_any_mut(&mut self) -> &mut dyn Any;

    /// Calls `visit(name, child)` for each sub-module, in build order (what upstream's
    /// `named_children` lists): [`Build::children`] of the concrete type.
    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module));

    /// The module this one wraps, if it is a wrapper ([`Build::wraps`]).
    fn wrapped(&self) -> Option<&dyn Module>;
}

impl<T: Build + Send + Sync> Module for T {
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        Build::children(self, visit)
    }

    fn wrapped(&self) -> Option<&dyn Module> {
        Build::wraps(self)
    }
}

/// Every module under `module`, depth first in build order, with its dotted path under
/// `prefix` (upstream's `named_modules`, without the root).
///
/// ```
/// # use patch_core::{Build, Builder, Module, Result, Slot, named_modules};
/// # pub trait Block: Module {}
/// # impl Slot for dyn Block { const NAME: &'static str = "Block"; type Args<'a> = (); }
/// pub struct Leaf;
/// # impl Block for Leaf {}
/// impl Build for Leaf {
///     type Slot = dyn Block;
///     fn build(_: &Builder, _: ()) -> Result<Box<dyn Block>> { Ok(Box::new(Leaf)) }
/// }
/// pub struct Pair { left: Leaf, right: Box<dyn Block> }
/// # impl Block for Pair {}
/// impl Build for Pair {
///     type Slot = dyn Block;
///     fn build(_: &Builder, _: ()) -> Result<Box<dyn Block>> {
///         Ok(Box::new(Pair { left: Leaf, right: Box::new(Leaf) }))
///     }
///     fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
///         visit("left", &self.left);
///         visit("right", &*self.right);
///     }
/// }
/// let pair = Pair { left: Leaf, right: Box::new(Leaf) };
/// let paths: Vec<String> = named_modules(&pair, "block").into_iter().map(|(p, _)| p).collect();
/// assert_eq!(paths, ["block.left", "block.right"]);
/// ```
pub fn named_modules<'a>(module: &'a dyn Module, prefix: &str) -> Vec<(String, &'a dyn Module)> {
    fn walk<'a>(module: &'a dyn Module, prefix: &str, out: &mut Vec<(String, &'a dyn Module)>) {
        let mut kids: Vec<(String, &'a dyn Module)> = Vec::new();
        module.children(&mut |name, child| kids.push((name.to_string(), child)));
        for (name, child) in kids {
            let path = if prefix.is_empty() {
                name
            } else if name.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{name}")
            };
            out.push((path.clone(), child));
            walk(child, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(module, prefix, &mut out);
    out
}

/// Type checks and downcasts on any module, including slot trait objects:
/// `model.layers[0].self_attn.is::<CustomLlamaAttention>()`.
pub trait ModuleExt: Module {
    /// Whether the module is a `T`.
    fn is<T: Any>(&self) -> bool {
        self.as_any().is::<T>()
    }

    /// The module as a `T`, if it is one.
    fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.as_any().downcast_ref::<T>()
    }

    /// The module as a mutable `T`, if it is one.
    fn downcast_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.as_any_mut().downcast_mut::<T>()
    }
}

impl<M: Module + ?Sized> ModuleExt for M {}

/// How a site or a replacement is constructed for its slot.
///
/// `build` receives the [`Builder`] positioned at the module's path (weights come from it,
/// sub-sites are built through it) and the slot's arguments, and returns the module boxed as
/// the slot's trait object: the compiler checks that it fills the slot.
pub trait Build: 'static {
    /// The slot this type fills (`dyn Attention`).
    type Slot: Slot + ?Sized;

    /// Builds the module at `b`'s path.
    fn build(b: &Builder, args: <Self::Slot as Slot>::Args<'_>) -> Result<Box<Self::Slot>>;

    /// Weight transforms this type needs, applied to every tensor requested under the path it
    /// is built at (a fused-QKV attention carries the q/k/v concatenation). None by default.
    ///
    /// [`Builder::build`] applies them to whichever type it builds, original or replacement. A
    /// constructor called directly (a replacement wrapping the original) gets them through
    /// [`Builder::with_transforms_of`].
    fn transforms() -> Vec<Transform> {
        Vec::new()
    }

    /// Calls `visit(name, child)` for each sub-module this module holds (its attention's
    /// projections, a layer's `self_attn` and `mlp`), in build order: what
    /// [`named_modules`] walks. By default, the children of the module it wraps
    /// ([`Build::wraps`]), else none: a wrapper never hides the children of what it wraps
    /// unless it says otherwise.
    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module))
    where
        Self: Sized,
    {
        if let Some(inner) = self.wraps() {
            inner.children(visit);
        }
    }

    /// The module this one wraps, if any: a `#[patch(Site)]` wrapper's field, or what a
    /// replacement got from [`Builder::build_original`] (`Some(&*self.inner)`). Its children
    /// are this module's unless [`Build::children`] says otherwise.
    fn wraps(&self) -> Option<&dyn Module>
    where
        Self: Sized,
    {
        None
    }
}
