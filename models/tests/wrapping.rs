//! A wrapper never hides the children of what it wraps: Qwen3's attention wrapped by
//! `#[patch(Site)]` and by `build_original` + `Build::wraps` keeps `q_norm`, `k_norm` and the
//! projections reachable by path, exactly as the unwrapped model lists them; a replacement that
//! says nothing about what it holds (no `wraps`) lists no children, which is what makes the
//! first two checks mean something.

use std::path::Path;

use patchwork_models::prelude::*;
use patchwork_models::qwen3::Qwen3Attention;

/// The site wrapped by type (registered at link time in this test binary only).
#[patch(Qwen3Attention)]
pub struct ByType(Qwen3Attention);

impl Attention for ByType {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        self.0.forward(x, ctx)
    }
}

/// Any family's attention wrapped through `build_original`, saying what it wraps.
pub struct AnyFamily {
    inner: Box<dyn Attention>,
}

impl Build for AnyFamily {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> Result<Box<dyn Attention>> {
        Ok(Box::new(Self {
            inner: b.build_original(args)?,
        }))
    }
    fn wraps(&self) -> Option<&dyn Module> {
        Some(&*self.inner)
    }
}

impl Attention for AnyFamily {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        self.inner.forward(x, ctx)
    }
}

/// The same wrapper without `wraps`: its children are its own business, so none are listed.
pub struct Opaque {
    inner: Box<dyn Attention>,
}

impl Build for Opaque {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> Result<Box<dyn Attention>> {
        Ok(Box::new(Self {
            inner: b.build_original(args)?,
        }))
    }
}

impl Attention for Opaque {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        self.inner.forward(x, ctx)
    }
}

fn load(patches: PatchSet) -> CausalLM {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen3-tiny");
    AutoModelForCausalLM::from_pretrained(dir, &LoadOptions::default().with_patches(patches))
        .expect("qwen3-tiny loads")
}

fn paths(model: &CausalLM) -> Vec<String> {
    model.named_modules().into_iter().map(|(p, _)| p).collect()
}

const CHILDREN: [&str; 6] = ["q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"];

#[test]
fn a_site_wrapper_keeps_the_wrapped_attentions_children() {
    let plain = load(PatchSet::empty());
    let wrapped = load(PatchSet::link_time());
    assert!(
        wrapped
            .get_submodule_as::<ByType>("model.layers.0.self_attn")
            .is_ok()
    );
    for child in CHILDREN {
        let path = format!("model.layers.0.self_attn.{child}");
        assert!(wrapped.get_submodule(&path).is_ok(), "{path} is hidden");
    }
    assert_eq!(paths(&wrapped), paths(&plain));
    // Which patch won there, in one call.
    let site = wrapped.built_at("model.layers.0.self_attn").unwrap();
    assert!(site.built::<ByType>());
    assert_eq!(site.winner().unwrap().key(), "Qwen3Attention");
}

#[test]
fn a_build_original_wrapper_that_says_what_it_wraps_keeps_its_children() {
    let plain = load(PatchSet::empty());
    let set = PatchSet::from_mapping([(".*Attention$", Replacement::of::<AnyFamily>())]).unwrap();
    let wrapped = load(set);
    let site = wrapped.built_at("model.layers.1.self_attn").unwrap();
    assert!(site.built::<AnyFamily>() && site.built::<Qwen3Attention>());
    for child in CHILDREN {
        let path = format!("model.layers.1.self_attn.{child}");
        assert!(wrapped.get_submodule(&path).is_ok(), "{path} is hidden");
    }
    assert_eq!(paths(&wrapped), paths(&plain));
}

#[test]
fn a_wrapper_that_does_not_say_what_it_wraps_lists_no_children() {
    let set = PatchSet::from_mapping([("Qwen3Attention", Replacement::of::<Opaque>())]).unwrap();
    let opaque = load(set);
    assert!(
        opaque
            .get_submodule_as::<Opaque>("model.layers.0.self_attn")
            .is_ok()
    );
    let err = match opaque.get_submodule("model.layers.0.self_attn.q_norm") {
        Ok(m) => panic!("q_norm is listed, as a {}", m.type_name()),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("no module at \"model.layers.0.self_attn.q_norm\""),
        "{err}"
    );
}
