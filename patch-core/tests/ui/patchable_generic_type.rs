#![allow(unused_imports)]
use patch_core::{Build, Builder, Module, Result, Slot};

pub trait Attention: Module {
    fn forward(&self) -> u32;
}
impl Slot for dyn Attention {
    const NAME: &'static str = "Attention";
    type Args<'a> = ();
}

#[patch_core::patchable]
pub struct LlamaAttention<const N: usize>;

fn main() {}
