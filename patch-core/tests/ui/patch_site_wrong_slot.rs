//! `#[patch(SiteType)]` checks at compile time that the replacement fills the site's slot.
use patch_core::{Build, Builder, Module, Result, Slot, patchable};

pub trait Attention: Module {}
impl Slot for dyn Attention {
    const NAME: &'static str = "Attention";
    type Args<'a> = ();
}
pub trait Mlp: Module {}
impl Slot for dyn Mlp {
    const NAME: &'static str = "Mlp";
    type Args<'a> = ();
}

#[patchable]
pub struct LlamaAttention;
impl Attention for LlamaAttention {}
impl Build for LlamaAttention {
    type Slot = dyn Attention;
    fn build(_: &Builder, _: ()) -> Result<Box<dyn Attention>> {
        Ok(Box::new(LlamaAttention))
    }
}

/// An MLP registered for the attention site.
#[patch_core::patch(LlamaAttention)]
pub struct MyMlp {
    scale: f32,
}
impl Mlp for MyMlp {}
impl Build for MyMlp {
    type Slot = dyn Mlp;
    fn build(_: &Builder, _: ()) -> Result<Box<dyn Mlp>> {
        Ok(Box::new(MyMlp { scale: 1.0 }))
    }
}

fn main() {}
