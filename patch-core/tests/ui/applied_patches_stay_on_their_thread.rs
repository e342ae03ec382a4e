#![allow(unused_imports)]
use patch_core::{Build, Builder, Module, Result, Slot};

pub trait Attention: Module {
    fn forward(&self) -> u32;
}
impl Slot for dyn Attention {
    const NAME: &'static str = "Attention";
    type Args<'a> = ();
}

// apply_patches belongs to the thread that entered it: its guard cannot be sent elsewhere.
fn main() {
    let applied = patch_core::apply_patches();
    std::thread::spawn(move || drop(applied));
}
