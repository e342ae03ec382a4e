//! `#[patch(Type)]` names a site: a type that is not `#[patchable]` is an error at the key.
use patch_core::{Build, Builder, Module, Result, Slot};

pub trait Attention: Module {}
impl Slot for dyn Attention {
    const NAME: &'static str = "Attention";
    type Args<'a> = ();
}

pub struct NotASite;

#[patch_core::patch(NotASite)]
pub struct Custom;
impl Attention for Custom {}
impl Build for Custom {
    type Slot = dyn Attention;
    fn build(_: &Builder, _: ()) -> Result<Box<dyn Attention>> {
        Ok(Box::new(Custom))
    }
}

fn main() {}
