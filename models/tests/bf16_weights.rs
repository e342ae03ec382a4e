//! bf16 checkpoints computed in float32 on CPU: projection and expert weights are kept in bf16
//! by default (widened exactly as the kernels read them) or upcast at load on request; both
//! give the same logits, and saving writes the checkpoint back unchanged.

mod common;

use std::path::Path;

use candle_core::DType;
use patch_checkpoint::SaveOptions;
use patch_core::PatchSet;
use patchwork_models::kernels::{Isa, with_isa};
use patchwork_models::{AutoModelForCausalLM, LoadOptions};
use patchwork_testing::{LOGITS, Tolerance, assert_close};

fn options() -> LoadOptions {
    LoadOptions::default().with_patches(PatchSet::empty())
}

fn check(fixture: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(fixture);
    let model = AutoModelForCausalLM::from_pretrained(&src, &options()).unwrap();
    assert_eq!(
        model.config().weight_dtype,
        None,
        "{fixture}: f32 files keep f32"
    );
    let tmp = tempfile::tempdir().unwrap();
    let bf16_dir = tmp.path().join("bf16");
    let bf16 = SaveOptions {
        dtype: Some(DType::BF16),
        ..SaveOptions::default()
    };
    model.save_pretrained(&bf16_dir, &bf16).unwrap();

    let kept = AutoModelForCausalLM::from_pretrained(&bf16_dir, &options()).unwrap();
    let upcast =
        AutoModelForCausalLM::from_pretrained(&bf16_dir, &options().with_upcast_weights(true))
            .unwrap();
    assert_eq!(kept.config().weight_dtype, Some(DType::BF16), "{fixture}");
    assert_eq!(upcast.config().weight_dtype, None, "{fixture}");
    let stored = kept
        .weights()
        .params()
        .snapshot()
        .into_iter()
        .filter(|(_, t)| t.rank() >= 2 && t.dtype() == DType::BF16)
        .count();
    assert!(stored > 0, "{fixture}: no weight kept in bf16");

    let ids =
        candle_core::Tensor::new(&[[1u32, 5, 9, 2, 7, 3]], &candle_core::Device::Cpu).unwrap();
    // The widening path (bf16 weights widened exactly, products in f32): the upcast model's
    // logits. AMX, where present, rounds the activations to bf16 as well: checked below.
    let widening = Isa::detect().min(Isa::Avx512);
    let a = with_isa(widening, || kept.forward(&ids, None)).unwrap();
    let b = upcast.forward(&ids, None).unwrap();
    let what = format!("{fixture}: kept vs upcast logits");
    let widened = assert_close(&a, &b, LOGITS, &what);
    if Isa::detect() == Isa::Amx {
        // Activations rounded to bf16 (2^-9 relative) before every projection of the prompt:
        // 0.4-0.6% of max |logits| measured on the fixtures; a wrong tile moves them far more.
        let amx = kept.forward(&ids, None).unwrap();
        let what = format!("{fixture}: AMX logits");
        let r = assert_close(&amx, &b, Tolerance::scaled(2e-2), &what);
        let scale = widened.scale.max(1.0);
        eprintln!(
            "{fixture}: AMX logits within {:.2}% of max |logits|",
            100.0 * r.max_abs_diff / scale
        );
        assert!(r.max_abs_diff > 0.0, "{fixture}: the AMX path did not run");
    }

    // Saving the kept model writes the bf16 files back bit for bit.
    let again = tmp.path().join("again");
    kept.save_pretrained(&again, &SaveOptions::default())
        .unwrap();
    let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    let (bx, by) = (read(&bf16_dir), read(&again));
    let (x, y) = (
        safetensors::SafeTensors::deserialize(&bx)
            .unwrap()
            .tensors(),
        safetensors::SafeTensors::deserialize(&by)
            .unwrap()
            .tensors(),
    );
    let mut x: Vec<_> = x
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.data().to_vec()))
        .collect();
    let mut y: Vec<_> = y
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.data().to_vec()))
        .collect();
    x.sort_by(|a, b| a.0.cmp(&b.0));
    y.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(x.len(), y.len(), "{fixture}");
    for (a, b) in x.iter().zip(&y) {
        assert!(a == b, "{fixture}: {} not saved back exactly", a.0);
    }
}

/// Every family's reference checkpoint, saved as bf16.
#[test]
fn bf16_weights_are_kept_and_match_upcast_for_every_family() {
    for f in common::fixtures() {
        check(&f.name);
    }
}
