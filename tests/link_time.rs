//! Link-time discovery across crates: `linked-patches` registers a replacement with `#[patch]`
//! and this binary finds it with no run-time call, because it references the crate. The
//! `unreferenced-patches` crate is a dependency too, but nothing here names it: the linker
//! drops it, and its patch is absent.

use linked_patches as _;
use patch_core::ModuleExt;

use linked_patches::LinkedMlp;
use patch_core::matching::Outcome;
use patch_core::{Builder, PatchSet, RegisteredAt, get_patch_mapping};
use patchwork_tests::{build_toy, toy_input, toy_weights};

#[test]
fn a_referenced_crate_registers_its_patch_at_link_time() {
    let mapping = get_patch_mapping();
    let record = mapping
        .get("ToyMLP")
        .next()
        .expect("linked-patches' #[patch(\"ToyMLP\")] is registered");
    assert_eq!(
        record.replacement().type_name(),
        std::any::type_name::<LinkedMlp>()
    );
    assert_eq!(record.label(), Some("negating MLP"));
    assert!(matches!(
        record.registered_at(),
        RegisteredAt::LinkTime {
            module_path: "linked_patches",
            ..
        }
    ));
}

#[test]
fn the_global_registry_applies_it_to_every_matching_site() {
    let model = build_toy(&Builder::new(toy_weights()).with_patches(PatchSet::global())).unwrap();
    for layer in &model.layers {
        let layer = layer.downcast_ref::<toy_model::ToyDecoderLayer>().unwrap();
        assert!(layer.mlp.is::<LinkedMlp>());
    }
    // The replacement negates: the MLP branch now subtracts what the original would add.
    let patched = model.forward(&toy_input()).unwrap();
    let original = build_toy(&Builder::new(toy_weights()))
        .unwrap()
        .forward(&toy_input())
        .unwrap();
    patchwork_testing::assert_differs(
        &patched,
        &original,
        1e-3,
        "the linked MLP changes the output",
    );
}

#[test]
fn an_unreferenced_crate_contributes_nothing() {
    let set = PatchSet::link_time();
    assert!(
        set.records().iter().all(|r| !r
            .replacement()
            .type_name()
            .starts_with("unreferenced_patches")),
        "unreferenced-patches is linked but never named, so the linker drops it: {set:?}"
    );
    let norm = <toy_model::ToyRMSNorm as patch_core::Site>::info();
    assert!(matches!(set.resolve(norm).outcome, Outcome::Original));
}
