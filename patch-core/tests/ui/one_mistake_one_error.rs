#![allow(unused_imports)]
use patch_core::{Build, Builder, Module, Result, Slot};

pub trait Attention: Module {
    fn forward(&self) -> u32;
}
impl Slot for dyn Attention {
    const NAME: &'static str = "Attention";
    type Args<'a> = ();
}

// The regex is wrong, but the type is still defined and usable below: the only error is the
// regex, not a cascade of "cannot find type Custom".
#[patch_core::patch("*Attention")]
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

fn main() {
    let c = Custom;
    let _ = c.forward();
}
