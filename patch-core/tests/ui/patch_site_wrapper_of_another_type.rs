//! A wrapper `#[patch(SiteType)] struct X(Inner)` is built from the site's constructor: its
//! one field must hold the site type.
use patch_core::{Build, Builder, Module, Result, Slot, patchable};

pub trait Attention: Module {}
impl Slot for dyn Attention {
    const NAME: &'static str = "Attention";
    type Args<'a> = ();
}

#[patchable]
pub struct LlamaAttention;
impl LlamaAttention {
    pub fn new(_: &Builder, _: ()) -> Result<Self> {
        Ok(LlamaAttention)
    }
}
impl Attention for LlamaAttention {}
impl Build for LlamaAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: ()) -> Result<Box<dyn Attention>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

#[patch_core::patch(LlamaAttention)]
pub struct Custom(u32);
impl Attention for Custom {}

fn main() {}
