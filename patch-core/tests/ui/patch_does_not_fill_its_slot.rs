#![allow(unused_imports)]
use patch_core::{Build, Builder, Module, Result, Slot};

pub trait Attention: Module {
    fn forward(&self) -> u32;
}
impl Slot for dyn Attention {
    const NAME: &'static str = "Attention";
    type Args<'a> = ();
}

pub trait Mlp: Module {}
impl Slot for dyn Mlp {
    const NAME: &'static str = "Mlp";
    type Args<'a> = ();
}

/// Claims the Attention slot, but is an MLP: its constructor hands out another type.
#[patch_core::patch("LlamaAttention")]
pub struct NotAnAttention;
impl Mlp for NotAnAttention {}

struct Helper;
impl Build for Helper {
    type Slot = dyn Attention;
    fn build(_: &Builder, _: ()) -> Result<Box<dyn Attention>> {
        Ok(Box::new(Helper))
    }
}
impl Attention for Helper {
    fn forward(&self) -> u32 {
        0
    }
}

impl Build for NotAnAttention {
    type Slot = dyn Attention;
    fn build(_: &Builder, _: ()) -> Result<Box<dyn Attention>> {
        Ok(Box::new(Helper))
    }
}

fn main() {}
