//! What a building block holds: its sub-modules by name, for the sites that wrap it.

use patch_core::Module;

/// The sub-modules a building block holds, by the names transformers gives them
/// (`q_proj`, `self_attn`, `mlp`): what the site wrapping the block lists as its children
/// ([`patch_core::Build::children`]), so `named_modules` and `get_submodule` reach them. A block
/// without sub-modules implements it with nothing in the body.
pub trait Children {
    /// Calls `visit(name, child)` for each sub-module, in build order.
    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        let _ = visit;
    }
}
