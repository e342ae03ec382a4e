//! The page's main use cases through an outside crate (`authoring-patches`): link-time patches
//! in their shortest form, a built model walked by path, run-time registration over them, and
//! manual construction with `apply_patches`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

// Referenced, so the linker keeps its patches (a crate of patches must be).
use authoring_patches::{
    ATTENTION_CALLS, CUSTOM_ATTENTION_CALLS, CountingAttention, ModuleListExperts, WrappedLayer,
};
use candle_core::{Device, Tensor};
use patch_core::checkpoint::{Checkpoint, SaveOptions, Weights};
use patch_core::{Build, Builder, ModuleExt, PatchSet, Replacement, apply_patches};
use patchwork_models::decoder::{Attention, AttentionArgs, LayerContext};
use patchwork_models::llama::{LlamaAttention, LlamaConfig, LlamaForCausalLM};
use patchwork_models::{AutoModelForCausalLM, CausalLM, LoadOptions};
use patchwork_testing::{LOGITS, assert_close};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

/// `max |a - b|`: NaN when either has a NaN, so every comparison with it fails.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    patchwork_testing::max_abs_diff(a, b).unwrap()
}

fn tokens() -> Tensor {
    Tensor::new(&[[66u32, 221, 47, 234, 117, 102, 13, 226]], &Device::Cpu).unwrap()
}

fn plain(name: &str) -> CausalLM {
    AutoModelForCausalLM::from_pretrained(
        fixture(name),
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )
    .unwrap()
}

#[test]
fn the_outside_crates_patches_are_linked_and_explained() {
    assert!(
        PatchSet::link_time_crates().contains(&"authoring_patches"),
        "{:?}",
        PatchSet::link_time_crates()
    );
    let text = AutoModelForCausalLM::explain("llama").unwrap().to_string();
    assert!(
        text.contains("#[patch] in crate authoring_patches"),
        "{text}"
    );
}

#[test]
fn wrappers_apply_and_the_model_is_walked_through_them() {
    let model =
        AutoModelForCausalLM::from_pretrained(fixture("llama-tiny"), &LoadOptions::default())
            .unwrap();
    // model.model.layers[0] is the wrapper; its self_attn (the wrapped layer's) is patched too.
    model
        .get_submodule_as::<WrappedLayer>("model.layers.0")
        .unwrap();
    let attn = model.get_submodule("model.layers.1.self_attn").unwrap();
    assert!(attn.is::<CountingAttention>(), "{}", attn.type_name());
    let paths: Vec<String> = model.named_modules().into_iter().map(|(p, _)| p).collect();
    let built: Vec<String> = model
        .report()
        .sites()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(
        paths, built,
        "named_modules walks every built module, in build order"
    );
    let err = model
        .get_submodule_as::<LlamaAttention>("model.layers.1.self_attn")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("CountingAttention") && err.contains("LlamaAttention"),
        "{err}"
    );
    let before = ATTENTION_CALLS.load(Ordering::Relaxed);
    let logits = model.forward(&tokens(), None).unwrap();
    assert!(
        ATTENTION_CALLS.load(Ordering::Relaxed) >= before + 2,
        "both layers' attention ran"
    );
    let d = max_diff(
        &logits,
        &plain("llama-tiny").forward(&tokens(), None).unwrap(),
    );
    assert!(d < 1e-5, "delegating wrappers change nothing: {d}");
}

#[test]
fn module_list_experts_load_per_expert_keys_and_save_back_exactly() {
    let model =
        AutoModelForCausalLM::from_pretrained(fixture("qwen3-moe-tiny"), &LoadOptions::default())
            .unwrap();
    assert!(
        model
            .get_submodule("model.layers.0.mlp.experts")
            .unwrap()
            .is::<ModuleListExperts>()
    );
    let d = max_diff(
        &model.forward(&tokens(), None).unwrap(),
        &plain("qwen3-moe-tiny").forward(&tokens(), None).unwrap(),
    );
    assert!(d < 1e-4, "{d}");
    let out = std::env::temp_dir().join(format!("authoring-{}", std::process::id()));
    model
        .save_pretrained(&out, &SaveOptions::default())
        .unwrap();
    let tensors = |dir: &Path| {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut all: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.data().to_vec()))
            .collect();
        all.sort();
        all
    };
    let (a, b) = (tensors(&fixture("qwen3-moe-tiny")), tensors(&out));
    std::fs::remove_dir_all(&out).unwrap();
    assert!(a == b, "saved back in the per-expert layout, bit for bit");
}

/// Run-time registration over the link-time patches, in an explicit set (so tests running in
/// parallel in this process do not see it): an exact key with overwrite replaces the entry.
struct Halved(Box<dyn Attention>);
impl Build for Halved {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> patch_core::Result<Box<dyn Attention>> {
        Ok(Box::new(Self(LlamaAttention::build(b, args)?)))
    }
}
impl Attention for Halved {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        self.0.forward(x, ctx)? * 0.5
    }
}

#[test]
fn run_time_registration_overrides_a_link_time_patch() {
    let mut set = PatchSet::global();
    let e = set
        .register_patch_mapping([("LlamaAttention", Replacement::of::<Halved>())], false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("patch key \"LlamaAttention\" is already registered"),
        "{e}"
    );
    set.register_patch_mapping([("LlamaAttention", Replacement::of::<Halved>())], true)
        .unwrap();
    let model = AutoModelForCausalLM::from_pretrained(
        fixture("llama-tiny"),
        &LoadOptions::default().with_patches(set),
    )
    .unwrap();
    assert!(
        model
            .get_submodule("model.layers.0.self_attn")
            .unwrap()
            .is::<Halved>()
    );
}

#[test]
fn manual_construction_uses_the_originals_unless_inside_apply_patches() {
    let dir = fixture("llama-tiny");
    let ckpt = Checkpoint::open(&dir).unwrap();
    let config = LlamaConfig::from_json(ckpt.config(), "config.json").unwrap();
    let build = || {
        let source = ckpt.source(ckpt.registered_transforms().unwrap()).unwrap();
        let weights = Weights::new(source, candle_core::DType::F32, &Device::Cpu);
        let model = LlamaForCausalLM::build(&Builder::new(weights.clone()), &config).unwrap();
        weights.finish().unwrap();
        model
    };
    let by_hand = build();
    assert!(
        by_hand
            .get_submodule("model.layers.0.self_attn")
            .unwrap()
            .is::<LlamaAttention>()
    );
    let scoped = {
        let _guard = apply_patches();
        build()
    };
    assert!(
        scoped
            .get_submodule("model.layers.0.self_attn")
            .unwrap()
            .is::<CountingAttention>()
    );
}

fn fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixture(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("reference.safetensors").exists())
        .collect();
    dirs.sort();
    dirs
}

fn reference_logits(dir: &Path) -> (Tensor, Tensor) {
    let r =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    (r["input_ids"].clone(), r["logits"].clone())
}

/// An attention implementation registered at link time by another crate gives the reference
/// logits on every family, and so does switching implementations without a reload.
#[test]
fn a_link_time_attention_implementation_serves_every_family() {
    for dir in fixtures() {
        let (ids, want) = reference_logits(&dir);
        let options = LoadOptions::default()
            .with_patches(PatchSet::empty())
            .with_attn_implementation("counted");
        let mut model = AutoModelForCausalLM::from_pretrained(&dir, &options).unwrap();
        assert_eq!(model.implementations().attention().name, "counted");
        let before = CUSTOM_ATTENTION_CALLS.load(Ordering::Relaxed);
        let logits = model.forward(&ids, None).unwrap();
        assert!(
            CUSTOM_ATTENTION_CALLS.load(Ordering::Relaxed)
                >= before + model.config().num_hidden_layers
        );
        let what = dir.display().to_string();
        assert_close(&logits, &want, LOGITS, &what);
        // Switching: no reload, the same logits.
        let weights_before = model.weights().params().snapshot();
        model.set_attn_implementation("sdpa").unwrap();
        let sdpa = model.forward(&ids, None).unwrap();
        assert_close(&sdpa, &logits, LOGITS, &format!("{what} sdpa"));
        let weights_after = model.weights().params().snapshot();
        assert!(
            weights_before
                .iter()
                .zip(&weights_after)
                .all(|(a, b)| a.1.id() == b.1.id())
        );
        if model.config().moe.is_some() {
            model.set_experts_implementation("looped").unwrap();
            let looped = model.forward(&ids, None).unwrap();
            assert_close(&looped, &logits, LOGITS, &format!("{what} looped"));
        }
        let text = model.explain().to_string();
        assert!(text.contains("attention \"sdpa\""), "{text}");
    }
}

#[test]
fn a_per_model_registration_is_invisible_to_other_models() {
    use patchwork_models::implementations::AttentionImplementation;
    fn halved(
        input: &patchwork_models::implementations::AttentionInput<'_>,
    ) -> candle_core::Result<patchwork_models::implementations::AttentionOutput> {
        let mut out = authoring_patches::counted_attention(input)?;
        out.output = (out.output * 0.5)?;
        Ok(out)
    }
    let options = LoadOptions::default().with_patches(PatchSet::empty());
    let mut a = AutoModelForCausalLM::from_pretrained(fixture("llama-tiny"), &options).unwrap();
    let mut b = AutoModelForCausalLM::from_pretrained(fixture("llama-tiny"), &options).unwrap();
    a.register_attention_implementation(AttentionImplementation::new("halved", halved));
    a.set_attn_implementation("halved").unwrap();
    let err = b.set_attn_implementation("halved").unwrap_err().to_string();
    assert!(
        err.contains("unknown implementation \"halved\"")
            && err.contains("counted")
            && err.contains("sdpa"),
        "{err}"
    );
    let c = AutoModelForCausalLM::from_pretrained(
        fixture("llama-tiny"),
        &options.clone().with_attn_implementation("halved"),
    );
    let e = c.err().unwrap().to_string();
    assert!(
        e.contains("unknown implementation \"halved\""),
        "a model loaded later does not see it either: {e}"
    );
    let x = tokens();
    assert!(max_diff(&a.forward(&x, None).unwrap(), &b.forward(&x, None).unwrap()) > 1e-3);
}

/// Under training the default "sdpa" gives way to "eager"; an implementation that declares
/// gradients is used as it is.
#[test]
fn a_gradient_capable_implementation_is_used_under_training() {
    let options = LoadOptions::default()
        .with_patches(PatchSet::empty())
        .trainable()
        .with_attn_implementation("counted");
    let model = AutoModelForCausalLM::from_pretrained(fixture("llama-tiny"), &options).unwrap();
    let before = CUSTOM_ATTENTION_CALLS.load(Ordering::Relaxed);
    let logits = model.forward(&tokens(), None).unwrap();
    assert!(CUSTOM_ATTENTION_CALLS.load(Ordering::Relaxed) > before);
    let grads = logits.sum_all().unwrap().backward().unwrap();
    let by_key = model.gradients(&grads).unwrap();
    let g = &by_key["model.layers.0.self_attn.q_proj.weight"];
    let largest = patchwork_testing::max_abs(g).unwrap();
    assert!(largest > 0.0 && largest.is_finite(), "{largest}");
}
