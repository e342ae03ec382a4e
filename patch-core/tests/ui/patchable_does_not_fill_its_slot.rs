#![allow(unused_imports)]
use patch_core::{Build, Builder, Module, Result, Slot};

pub trait Attention: Module {
    fn forward(&self) -> u32;
}
impl Slot for dyn Attention {
    const NAME: &'static str = "Attention";
    type Args<'a> = ();
}

/// Declares the Attention slot but does not implement Attention.
#[patch_core::patchable]
pub struct LlamaAttention;
impl Build for LlamaAttention {
    type Slot = dyn Attention;
    fn build(_: &Builder, _: ()) -> Result<Box<dyn Attention>> {
        Err(patch_core::Error::other("unreachable in this test"))
    }
}

fn main() {}
