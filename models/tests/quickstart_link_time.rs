//! The quickstart replacement registered at link time with `#[patch]`: every
//! `from_pretrained` in this binary builds it; a model built by hand outside `apply_patches`
//! does not. (Its own test binary: a link-time patch applies to everything linked with it.)

mod common;

use candle_core::{Device, Tensor};
use common::{check_close, fixtures_dir};
use patch_core::ModuleExt;
use patch_core::{Build, Builder, Module, PatchSet, patch};
use patchwork_models::decoder::{Attention, AttentionArgs, LayerContext};
use patchwork_models::llama::{LlamaAttention, LlamaDecoderLayer};
use patchwork_models::{AutoModelForCausalLM, CausalLM, LoadOptions};

/// Delegates to the original.
#[patch("LlamaAttention")]
pub struct CustomLlamaAttention {
    original: Box<dyn Attention>,
}

impl Build for CustomLlamaAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> patch_core::Result<Box<dyn Attention>> {
        Ok(Box::new(Self {
            original: LlamaAttention::build(b, args)?,
        }))
    }
}

impl Attention for CustomLlamaAttention {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        self.original.forward(x, ctx)
    }
}

fn attention_of(model: &CausalLM) -> &dyn Module {
    let layer: &dyn Module = &*model.model.layers[0];
    &*layer.downcast_ref::<LlamaDecoderLayer>().unwrap().self_attn
}

#[test]
fn link_time_patch_applies_to_from_pretrained() {
    let dir = fixtures_dir().join("llama-tiny");
    let patched = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default()).unwrap();
    assert!(attention_of(&patched).is::<CustomLlamaAttention>());
    let explained = AutoModelForCausalLM::explain("llama").unwrap().to_string();
    assert!(
        explained.contains("#[patch] in crate quickstart_link_time at"),
        "{explained}"
    );
    let plain = AutoModelForCausalLM::from_pretrained(
        &dir,
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )
    .unwrap();
    assert!(attention_of(&plain).is::<LlamaAttention>());
    let x = Tensor::new(&[[5u32, 6, 7, 8]], &Device::Cpu).unwrap();
    check_close(
        "link-time patched",
        &patched.forward(&x, None).unwrap(),
        &plain.forward(&x, None).unwrap(),
        None,
    )
    .unwrap();
}
