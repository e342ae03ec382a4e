#![warn(missing_docs)]
//! `#[patchable]` and `#[patch("regex")]`, the attributes of patchwork.
//!
//! Use them through `patch_core` (`use patch_core::{patch, patchable};`): they expand to paths
//! under `::patch_core`, so patch-core is the only dependency a user crate needs.
//!
//! Each macro parses its arguments and item into a typed model (modules `args`, `target`), checks
//! it with spanned errors, then expands (module `expand`). On error the original item is emitted
//! along with the error, so one mistake does not cascade into "type not found" errors.

use proc_macro::TokenStream;

mod args;
mod expand;
mod target;

/// Marks a layer type as a site. See `patch_core::patchable`.
#[proc_macro_attribute]
pub fn patchable(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::patchable(attr.into(), item.into()).into()
}

/// Registers a replacement type at link time. See `patch_core::patch`.
#[proc_macro_attribute]
pub fn patch(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::patch(attr.into(), item.into()).into()
}
