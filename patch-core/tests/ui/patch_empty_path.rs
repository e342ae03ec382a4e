#![allow(unused_imports)]
use patch_core::{Build, Builder, Module, Result, Slot};

pub trait Attention: Module {
    fn forward(&self) -> u32;
}
impl Slot for dyn Attention {
    const NAME: &'static str = "Attention";
    type Args<'a> = ();
}

#[patch_core::patch("Linear", path = "")]
pub struct Custom;
impl Build for Custom {
    type Slot = dyn Attention;
    fn build(_: &Builder, _: ()) -> Result<Box<dyn Attention>> {
        Ok(Box::new(Custom))
    }
}
impl Attention for Custom {
    fn forward(&self) -> u32 {
        1
    }
}

fn main() {}
