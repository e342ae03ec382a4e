//! Weight transforms a type carries (`Build::transforms`) apply wherever that type is built:
//! as the original site, as a replacement, and inside a wrapper that calls its constructor
//! through `Builder::with_transforms_of`.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use patch_core::checkpoint::{Checkpoint, Op, Transform, WeightConverter, Weights};
use patch_core::{Build, Builder, ModuleExt, PatchSet, Replacement, Result, Slot, patchable};

/// A slot holding one fused `[2, 3]` weight.
pub trait Pair: patch_core::Module {
    fn weight(&self) -> &Tensor;
}
impl Slot for dyn Pair {
    const NAME: &'static str = "Pair";
    type Args<'a> = ();
}

/// A site whose layout fuses the checkpoint's `a.weight` and `b.weight` into `ab.weight`.
#[patchable]
pub struct FusedPair {
    ab: Tensor,
}
impl FusedPair {
    fn new(b: &Builder) -> Result<Self> {
        Ok(Self {
            ab: b.get((2, 3), "ab.weight")?,
        })
    }
}
impl Build for FusedPair {
    type Slot = dyn Pair;
    fn build(b: &Builder, _: ()) -> Result<Box<dyn Pair>> {
        Ok(Box::new(Self::new(b)?))
    }
    fn transforms() -> Vec<Transform> {
        vec![
            WeightConverter::new(
                ["a.weight", "b.weight"],
                ["ab.weight"],
                [Op::Concatenate { dim: 0 }],
            )
            .into(),
        ]
    }
}
impl Pair for FusedPair {
    fn weight(&self) -> &Tensor {
        &self.ab
    }
}

/// Wraps the original, building it through its constructor directly.
pub struct Wrapper {
    inner: FusedPair,
}
impl Build for Wrapper {
    type Slot = dyn Pair;
    fn build(b: &Builder, _: ()) -> Result<Box<dyn Pair>> {
        Ok(Box::new(Self {
            inner: FusedPair::new(&b.with_transforms_of::<FusedPair>())?,
        }))
    }
}
impl Pair for Wrapper {
    fn weight(&self) -> &Tensor {
        &self.inner.ab
    }
}

fn checkpoint() -> (tempfile::TempDir, Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    let a = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[[4f32, 5., 6.]], &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> = [
        ("pair.a.weight".to_string(), a),
        ("pair.b.weight".to_string(), b),
    ]
    .into();
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "pair"}"#).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    (dir, ckpt)
}

fn build_with(patches: PatchSet) -> (Box<dyn Pair>, Weights) {
    let (_dir, ckpt) = checkpoint();
    let source = Arc::new(ckpt.source(Vec::new()).unwrap());
    let weights = Weights::from_arc(source, DType::F32, &Device::Cpu);
    let pair = Builder::new(weights.clone())
        .with_patches(patches)
        .pp("pair")
        .build::<FusedPair>(())
        .unwrap();
    weights.finish().unwrap();
    (pair, weights)
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

#[test]
fn the_original_site_gets_its_own_transforms() {
    let (pair, _) = build_with(PatchSet::empty());
    assert!(pair.is::<FusedPair>());
    assert_eq!(rows(pair.weight()), [[1., 2., 3.], [4., 5., 6.]]);
}

#[test]
fn a_wrapper_gets_the_wrapped_types_transforms_through_with_transforms_of() {
    let (pair, _) =
        build_with(PatchSet::from_mapping([("FusedPair", Replacement::of::<Wrapper>())]).unwrap());
    assert!(pair.is::<Wrapper>());
    assert_eq!(rows(pair.weight()), [[1., 2., 3.], [4., 5., 6.]]);
}
