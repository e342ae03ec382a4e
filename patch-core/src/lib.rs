#![warn(missing_docs)]
//! Swap the layers of a transformer model from your own crate, without editing model code.
//!
//! The Rust counterpart of transformers' `monkey_patching`:
//!
//! - A **site** is a layer type marked [`#[patchable]`](patchable) (`LlamaAttention`). Models
//!   never call a site's constructor directly: they ask a [`Builder`], which builds the site or
//!   the replacement a patch maps it to.
//! - A **slot** ([`Slot`]) is the contract a site fills: the trait object its parent stores and
//!   the arguments its constructor receives. A replacement must fill the site's slot, which the
//!   compiler checks; a pattern never applies to a site of another slot.
//! - A **patch** maps a key (an exact site name, or a regex) to a [`Replacement`].
//!   [`#[patch("regex")]`](patch) registers one at link time; [`register_patch_mapping`] at run
//!   time. [`matching`] documents which patch wins.
//! - `from_pretrained`/`from_config` build with the registered patches; a model built by hand
//!   uses the originals unless built while [`apply_patches`] applies patches (on the current thread) or
//!   with an explicit [`PatchSet`].
//! - [`explain`] says, for any list of sites, what each gets and why.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use patch_core::{patch, patchable, Build, Builder, Module, ModuleExt, PatchSet, Replacement, Result, Slot};
//! use patch_core::checkpoint::{RandomInit, Weights};
//!
//! /// The slot: what a block asks of its MLP.
//! pub trait Mlp: Module {
//!     fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
//! }
//! impl Slot for dyn Mlp {
//!     const NAME: &'static str = "Mlp";
//!     type Args<'a> = usize; // hidden size
//! }
//!
//! /// A site: the model's own MLP.
//! #[patchable]
//! pub struct ToyMLP { w: Tensor }
//! impl Build for ToyMLP {
//!     type Slot = dyn Mlp;
//!     fn build(b: &Builder, hidden: usize) -> Result<Box<dyn Mlp>> {
//!         Ok(Box::new(ToyMLP { w: b.get((hidden, hidden), "weight")? }))
//!     }
//! }
//! impl Mlp for ToyMLP {
//!     fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> { x.matmul(&self.w.t()?) }
//! }
//!
//! /// A replacement, registered at link time for every site whose name ends in "MLP".
//! #[patch("MLP$")]
//! pub struct Identity;
//! impl Build for Identity {
//!     type Slot = dyn Mlp;
//!     fn build(_: &Builder, _: usize) -> Result<Box<dyn Mlp>> { Ok(Box::new(Identity)) }
//! }
//! impl Mlp for Identity {
//!     fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> { Ok(x.clone()) }
//! }
//!
//! # fn main() -> Result<()> {
//! let weights = Weights::new(RandomInit::new(0, 0.02), DType::F32, &Device::Cpu);
//! // Built by hand, nothing applied: the original.
//! let mlp = Builder::new(weights.clone()).pp("mlp").build::<ToyMLP>(8)?;
//! assert!(mlp.is::<ToyMLP>());
//! // With the link-time patches: the replacement.
//! let mlp = Builder::new(weights).with_patches(PatchSet::link_time()).build::<ToyMLP>(8)?;
//! assert!(mlp.is::<Identity>());
//! assert_eq!(mlp.type_name(), std::any::type_name::<Identity>());
//! # Ok(()) }
//! ```

mod applied;
mod builder;
mod deprecated;
mod error;
mod explain;
mod key;
mod mapping;
pub mod matching;
mod observed;
mod patch_set;
mod registry;
mod replacement;
mod report;
mod site;
mod slot;

pub use applied::{AppliedPatches, apply_patches};
pub use builder::Builder;
#[allow(deprecated)]
pub use deprecated::{Origin, PatchScope, with_patches};
pub use error::{Error, Result};
pub use explain::{Explain, explain};
pub use key::PatchKey;
pub use mapping::{PatchEntry, PatchMapping, PatchRecord, RegisteredAt};
pub use matching::SiteMatcher;
pub use observed::{Observed, ObservedSite};
pub use patch_set::PatchSet;
pub use registry::{
    clear_patch_mapping, get_patch_mapping, register_patch_mapping, reset_patch_mapping,
    unregister_patch_mapping,
};
pub use replacement::Replacement;
pub use report::{BuildReport, BuiltSite};
pub use site::{Site, SiteInfo, SiteRegistration, sites, sites_named};
pub use slot::{Build, Module, ModuleExt, Slot, named_modules};

/// Marks a layer type as a site: it is recorded at link time, and models build it through
/// [`Builder::build`] so patches can replace it.
///
/// The site's name is the type's name (the upstream class name), or `name = "..."`. The type
/// must implement [`Build`], and fill the slot it declares there.
///
/// ```
/// # use patch_core::{patchable, Build, Builder, Result, Slot, Module};
/// # pub trait Norm: Module {}
/// # impl Slot for dyn Norm { const NAME: &'static str = "Norm"; type Args<'a> = (); }
/// #[patchable]
/// pub struct LlamaRMSNorm;
/// # impl Norm for LlamaRMSNorm {}
/// # impl Build for LlamaRMSNorm {
/// #     type Slot = dyn Norm;
/// #     fn build(_: &Builder, _: ()) -> Result<Box<dyn Norm>> { Ok(Box::new(LlamaRMSNorm)) }
/// # }
/// ```
pub use patch_macros::patchable;

/// Registers a replacement type at link time under a site name or regex:
/// `#[patch("LlamaAttention")]`, `#[patch(".*Attention$", priority = 10, name = "fused qkv")]`.
///
/// The regex is checked at compile time; the type must implement [`Build`] and fill the slot it
/// declares there. A linked crate contributes its patches only if something references it:
/// add `use that_crate as _;` to the binary that should pick them up.
pub use patch_macros::patch;

/// What writing a replacement needs, in one import: `use patch_core::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Build, Builder, Module, ModuleExt, PatchSet, Replacement, Site, Slot, apply_patches, patch,
        patchable, register_patch_mapping,
    };
}

/// The checkpoint crate: weights, transforms, loading and saving.
pub use patch_checkpoint as checkpoint;

/// Not public API: what the macros expand to.
#[doc(hidden)]
pub mod __private {
    pub use inventory;

    /// `Slot: SameSlot<Site's Slot>` holds only when the two slots are the same type: the
    /// compile-time check of `#[patch(SiteType)]`.
    #[diagnostic::on_unimplemented(
        message = "this replacement fills slot `{Self}`, but the site it names fills slot `{S}`",
        label = "the site named here fills another slot than the replacement",
        note = "a replacement must fill the slot of the site it replaces: its `Build::Slot` must be the site's"
    )]
    pub trait SameSlot<S: ?Sized> {}

    impl<S: ?Sized> SameSlot<S> for S {}

    /// `Field: WrapsSite<Site>` holds only when the wrapper's field is the site type: what a
    /// `#[patch(SiteType)]` wrapper is built from.
    #[diagnostic::on_unimplemented(
        message = "a wrapper `#[patch({S})] struct X(Field)` holds the site it wraps, but its field is `{Self}`",
        label = "the wrapper's field must be `{S}`",
        note = "its `Build` calls `{S}::new(b, args)` and stores the result in the field"
    )]
    pub trait WrapsSite<S> {
        /// The site value, as the field's type.
        fn into_field(site: S) -> Self;

        /// The field, as the module the wrapper wraps.
        fn as_module(&self) -> &dyn crate::Module;
    }

    impl<S: crate::Module> WrapsSite<S> for S {
        fn into_field(site: S) -> Self {
            site
        }

        fn as_module(&self) -> &dyn crate::Module {
            self
        }
    }
}
