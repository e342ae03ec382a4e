//! The names kept for one release after a rename or a move (CHANGELOG.md, 0.2.0 "Deprecated"):
//! code written against them still compiles, and each does what its replacement does.

#![allow(deprecated)]

use std::sync::Arc;

use candle_core::{DType, Device};
use patch_core::checkpoint::{RandomInit, Weights};
use patch_core::matching::SiteKey;
use patch_core::{
    AppliedPatches, Builder, ModuleExt, PatchSet, RegisteredAt, Replacement, Site, apply_patches,
};
use patchwork_models::llama::{LlamaConfig, LlamaModel};
use patchwork_models::{LoadOptions, family};
use patchwork_tests::replacements::IdentityMlp;
use toy_model::ToyMLP;

#[test]
fn patch_core_names() {
    // with_patches(f) is PatchSet::global().run_with(f): the registered set is applied inside.
    let applied = patch_core::with_patches(|| {
        Builder::new(Weights::new(
            RandomInit::new(0, 0.02),
            DType::F32,
            &Device::Cpu,
        ))
        .patches()
        .records()
        .len()
    });
    assert_eq!(applied, PatchSet::global().records().len());
    let scope: patch_core::PatchScope = apply_patches();
    let _same: &AppliedPatches = &scope;
    drop(scope);
    assert_eq!(
        PatchSet::empty().scope(|| 7),
        PatchSet::empty().run_with(|| 7)
    );

    let set = PatchSet::from_mapping([("MLP$", Replacement::of::<IdentityMlp>())]).unwrap();
    let key = SiteKey::from(ToyMLP::info());
    let outcome = |r: Arc<patch_core::matching::Resolution>| format!("{:?}", r.outcome);
    assert_eq!(outcome(set.resolve_key(key)), outcome(set.resolve(key)));
    assert_eq!(
        outcome(set.resolve_site::<ToyMLP>()),
        outcome(set.resolve(ToyMLP::info()))
    );
    assert!(outcome(set.resolve(key)).contains("IdentityMlp"));
    assert_eq!(
        set.explain_keys([key]).to_string(),
        set.explain([key]).to_string()
    );
    let record = set.records()[0].clone();
    let origin: &patch_core::Origin = record.origin();
    assert_eq!(origin, record.registered_at());
    assert!(matches!(origin, RegisteredAt::Runtime));
    assert!(record.is_match("ToyMLP") && !record.is_match("ToyNorm"));
    assert!(record.is_exact("MLP$") && !record.is_exact("ToyMLP"));
}

#[test]
fn patch_checkpoint_names() {
    let registry = patch_core::checkpoint::conversion_registry();
    let key = registry
        .keys()
        .into_iter()
        .next()
        .expect("a family registers its conversion");
    let origin: Option<patch_core::checkpoint::MappingOrigin> = registry.origin(&key);
    assert_eq!(origin, registry.registered_at(&key));
    assert!(origin.is_some());
}

#[test]
fn models_names() {
    let config = LlamaConfig::builder()
        .hidden_size(16)
        .intermediate_size(32)
        .num_hidden_layers(1)
        .num_attention_heads(2)
        .vocab_size(32)
        .build()
        .unwrap();
    // family::ForCausalLM is patchwork_models::ForCausalLM.
    let model =
        family::ForCausalLM::<LlamaModel>::from_config(&config, &LoadOptions::default()).unwrap();
    assert_eq!(model.model.layers.len(), 1);
    // LlamaModel::build is DecoderModel::load::<LlamaModel>.
    let decoder = config
        .decoder_config(Arc::new(config.to_json()), "config")
        .unwrap();
    let b = Builder::new(Weights::new(
        RandomInit::new(0, 0.02),
        DType::F32,
        &Device::Cpu,
    ));
    let body = LlamaModel::build(&b, &Arc::new(decoder)).unwrap();
    assert_eq!(body.layers.len(), 1);
    assert!(body.layers[0].is::<patchwork_models::llama::LlamaDecoderLayer>());
}
