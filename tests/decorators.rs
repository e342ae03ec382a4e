//! A replacement registered by pattern that wraps whatever each matched site builds
//! (`Builder::build_original`): the decorator form, with no global state.

use candle_core::Tensor;
use patch_core::{Build, Builder, ModuleExt, PatchSet, Replacement, Result};
use patchwork_tests::{build_toy, toy_input, toy_weights};
use toy_model::{Attention, LayerArgs};

/// Halves the output of whichever attention the site would have built.
pub struct Halved {
    inner: Box<dyn Attention>,
}
impl Build for Halved {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: LayerArgs<'_>) -> Result<Box<dyn Attention>> {
        Ok(Box::new(Halved {
            inner: b.build_original::<dyn Attention>(args)?,
        }))
    }
}
impl Attention for Halved {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.inner.forward(x)? * 0.5
    }
}

/// `max |a - b|`: NaN when either has a NaN, so every comparison with it fails.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    patchwork_testing::max_abs_diff(a, b).unwrap()
}

#[test]
fn a_decorator_wraps_the_original_with_its_weights() {
    let mut set = PatchSet::default();
    set.register_patch_mapping([(".*Attention", Replacement::of::<Halved>())], false)
        .unwrap();
    let plain = build_toy(&Builder::new(toy_weights()).with_patches(PatchSet::default())).unwrap();
    let b = Builder::new(toy_weights()).with_patches(set);
    let halved = build_toy(&b).unwrap();
    // The decorated site is reported as the replacement; the original inside reads the same
    // weights (same seeded init, same paths), so the model differs only by the halving.
    let report = b.report();
    let site = report
        .sites()
        .iter()
        .find(|s| s.path.ends_with("attention.self"))
        .unwrap();
    assert!(site.module.ends_with("Halved"), "{}", site.module);
    let x = toy_input();
    let (a, h) = (plain.forward(&x).unwrap(), halved.forward(&x).unwrap());
    assert!(max_diff(&a, &h) > 1e-3, "the halving shows in the output");
    // Layer by layer: the decorated inner attention is exactly half the plain one.
    let inner = |m: &toy_model::ToyModel| -> Tensor {
        let layer = m.layers[0]
            .downcast_ref::<toy_model::ToyDecoderLayer>()
            .unwrap();
        let block = layer
            .attention
            .downcast_ref::<toy_model::BertAttention>()
            .unwrap();
        block.inner.forward(&x).unwrap()
    };
    let want = (inner(&plain) * 0.5).unwrap();
    assert!(max_diff(&inner(&halved), &want) < 1e-6);
}

#[test]
fn build_original_outside_a_replacement_is_an_error() {
    let b = Builder::new(toy_weights()).pp("layers.0.attention.self");
    let cfg = patchwork_tests::toy_config();
    let e = b
        .build_original::<dyn Attention>(LayerArgs {
            config: &cfg,
            layer_idx: 0,
        })
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("only a replacement's build can build the original"),
        "{e}"
    );
    assert!(e.contains("layers.0.attention.self"), "{e}");
}
