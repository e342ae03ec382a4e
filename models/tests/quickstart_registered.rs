//! The quickstart replacement registered at run time with `register_patch_mapping`:
//! `from_pretrained` applies it, a hand-built model uses it only inside `apply_patches`, and
//! delegating to the original leaves the logits unchanged. (Its own test binary: it changes
//! the global registry.)

mod common;

use patch_core::ModuleExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Tensor};
use common::{check_close, fixtures_dir};
use patch_core::checkpoint::{Checkpoint, Weights};
use patch_core::{
    Build, Builder, PatchSet, Replacement, apply_patches, clear_patch_mapping,
    register_patch_mapping,
};
use patchwork_models::decoder::{Attention, AttentionArgs, LayerContext};
use patchwork_models::llama::{LlamaAttention, LlamaConfig, LlamaDecoderLayer, LlamaForCausalLM};
use patchwork_models::{AutoModelForCausalLM, CausalLM, LoadOptions};

static CALLS: AtomicUsize = AtomicUsize::new(0);

/// Counts its calls and delegates to the original.
struct CustomLlamaAttention {
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
        CALLS.fetch_add(1, Ordering::Relaxed);
        self.original.forward(x, ctx)
    }
}

fn attention_of(model: &CausalLM, layer: usize) -> &dyn Attention {
    &*model.model.layers[layer]
        .downcast_ref::<LlamaDecoderLayer>()
        .unwrap()
        .self_attn
}

#[test]
fn registered_replacement_applies_to_from_pretrained_and_inside_apply_patches_only() {
    let dir = fixtures_dir().join("llama-tiny");
    let input = Tensor::new(&[[66u32, 221, 47, 234, 117]], &Device::Cpu).unwrap();
    let plain = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default()).unwrap();
    assert!(attention_of(&plain, 0).is::<LlamaAttention>());

    register_patch_mapping(
        [("LlamaAttention", Replacement::of::<CustomLlamaAttention>())],
        false,
    )
    .unwrap();
    let patched = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default()).unwrap();
    for layer in 0..2 {
        assert!(attention_of(&patched, layer).is::<CustomLlamaAttention>());
    }
    assert_eq!(patched.report().patched(), 2);
    let shown = patched.explain().to_string();
    assert!(
        shown.contains("CustomLlamaAttention") && shown.contains("exact \"LlamaAttention\""),
        "{shown}"
    );

    let before = CALLS.load(Ordering::Relaxed);
    let a = plain.forward(&input, None).unwrap();
    let b = patched.forward(&input, None).unwrap();
    assert_eq!(
        CALLS.load(Ordering::Relaxed) - before,
        2,
        "one call per layer"
    );
    check_close("patched logits", &b, &a, None).unwrap();

    // By hand: originals, unless inside apply_patches.
    let config = LlamaConfig::from_json(plain.config_json(), "config.json").unwrap();
    let by_hand = |b: Builder| LlamaForCausalLM::build(&b, &config).unwrap();
    let weights = || {
        let ckpt = Checkpoint::open(&dir).unwrap();
        Weights::new(
            ckpt.source(Vec::new()).unwrap(),
            candle_core::DType::F32,
            &Device::Cpu,
        )
    };
    assert!(attention_of(&by_hand(Builder::new(weights())), 0).is::<LlamaAttention>());
    {
        let _scope = apply_patches();
        assert!(attention_of(&by_hand(Builder::new(weights())), 0).is::<CustomLlamaAttention>());
    }
    assert!(attention_of(&by_hand(Builder::new(weights())), 0).is::<LlamaAttention>());
    // An explicit set wins over everything.
    let explicit = Builder::new(weights()).with_patches(PatchSet::empty());
    assert!(attention_of(&by_hand(explicit), 1).is::<LlamaAttention>());

    // Registering the key again without overwrite is an error; clearing restores originals.
    let e = register_patch_mapping(
        [("LlamaAttention", Replacement::of::<CustomLlamaAttention>())],
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("patch key \"LlamaAttention\" is already registered"),
        "{e}"
    );
    clear_patch_mapping();
    let after = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default()).unwrap();
    assert!(attention_of(&after, 0).is::<LlamaAttention>());
}
