//! The global run-time API with transformers' names and semantics: `register_patch_mapping`,
//! `unregister_patch_mapping`, `clear_patch_mapping`, `get_patch_mapping`, plus
//! `reset_patch_mapping` to restore the link-time defaults. Tests share the global registry,
//! so each holds `global_lock()`.

use patch_core::ModuleExt;
use patch_core::{
    Builder, Error, PatchSet, RegisteredAt, Replacement, apply_patches, clear_patch_mapping,
    get_patch_mapping, register_patch_mapping, reset_patch_mapping, unregister_patch_mapping,
};
use patchwork_tests::replacements::{DoubledAttention, IdentityMlp, NoNorm, ZeroMlp};
use patchwork_tests::{build_toy, global_lock, toy_weights};

#[test]
fn register_then_get_shows_the_mapping_in_order() {
    let _g = global_lock();
    assert!(
        get_patch_mapping().is_empty(),
        "this binary links no #[patch]"
    );
    register_patch_mapping(
        [
            ("ToyMLP", Replacement::of::<ZeroMlp>()),
            (".*Attention", Replacement::of::<DoubledAttention>()),
        ],
        false,
    )
    .unwrap();
    let mapping = get_patch_mapping();
    let keys: Vec<&str> = mapping.keys().collect();
    assert_eq!(keys, ["ToyMLP", ".*Attention"]);
    let mlp = mapping.get("ToyMLP").next().unwrap();
    assert_eq!(
        mlp.replacement().type_name(),
        std::any::type_name::<ZeroMlp>()
    );
    assert_eq!(mlp.registered_at(), &RegisteredAt::Runtime);
    let text = mapping.to_string();
    assert!(
        text.contains("\"ToyMLP\"") && text.contains("ZeroMlp") && text.contains("run time"),
        "{text}"
    );
}

#[test]
fn registering_an_existing_key_needs_overwrite() {
    let _g = global_lock();
    register_patch_mapping([("ToyMLP", Replacement::of::<ZeroMlp>())], false).unwrap();
    let err =
        register_patch_mapping([("ToyMLP", Replacement::of::<IdentityMlp>())], false).unwrap_err();
    assert!(matches!(&err, Error::KeyExists { key, .. } if key == "ToyMLP"));
    assert!(err.to_string().contains("overwrite"), "{err}");
    // Nothing changed.
    let mapping = get_patch_mapping();
    assert_eq!(
        mapping
            .get("ToyMLP")
            .next()
            .unwrap()
            .replacement()
            .type_name(),
        std::any::type_name::<ZeroMlp>()
    );
    register_patch_mapping([("ToyMLP", Replacement::of::<IdentityMlp>())], true).unwrap();
    let mapping = get_patch_mapping();
    assert_eq!(mapping.len(), 1);
    assert_eq!(
        mapping
            .get("ToyMLP")
            .next()
            .unwrap()
            .replacement()
            .type_name(),
        std::any::type_name::<IdentityMlp>()
    );
}

#[test]
fn a_failing_mapping_registers_nothing() {
    let _g = global_lock();
    let err = register_patch_mapping(
        [
            ("ToyMLP", Replacement::of::<ZeroMlp>()),
            ("(unclosed", Replacement::of::<ZeroMlp>()),
        ],
        false,
    )
    .unwrap_err();
    assert!(matches!(&err, Error::InvalidPattern { key, .. } if key == "(unclosed"));
    assert!(err.to_string().contains("(unclosed"), "{err}");
    assert!(get_patch_mapping().is_empty());

    let err = register_patch_mapping(
        [
            ("ToyMLP", Replacement::of::<ZeroMlp>()),
            ("ToyMLP", Replacement::of::<IdentityMlp>()),
        ],
        false,
    )
    .unwrap_err();
    assert!(matches!(err, Error::DuplicateKey { .. }));
    assert!(get_patch_mapping().is_empty());

    let err =
        register_patch_mapping([("ToyRMSNorm", Replacement::of::<ZeroMlp>())], false).unwrap_err();
    assert!(matches!(err, Error::SlotMismatch { .. }), "{err}");
    assert!(get_patch_mapping().is_empty());
}

#[test]
fn unregister_removes_keys_and_rejects_unknown_ones() {
    let _g = global_lock();
    register_patch_mapping(
        [
            ("ToyMLP", Replacement::of::<ZeroMlp>()),
            (".*Attention", Replacement::of::<DoubledAttention>()),
            ("ToyRMSNorm", Replacement::of::<NoNorm>()),
        ],
        false,
    )
    .unwrap();
    unregister_patch_mapping([".*Attention"]).unwrap();
    assert_eq!(
        get_patch_mapping().keys().collect::<Vec<_>>(),
        ["ToyMLP", "ToyRMSNorm"]
    );

    let err = unregister_patch_mapping(["ToyMLP", "Nope"]).unwrap_err();
    assert!(matches!(&err, Error::UnknownKey { key, .. } if key == "Nope"));
    assert!(
        err.to_string().contains("\"ToyMLP\""),
        "the message lists what is registered: {err}"
    );
    assert_eq!(
        get_patch_mapping().len(),
        2,
        "nothing removed when one key is unknown"
    );

    unregister_patch_mapping(["ToyMLP", "ToyRMSNorm"]).unwrap();
    assert!(get_patch_mapping().is_empty());
}

#[test]
fn clear_removes_everything_and_reset_restores_link_time_defaults() {
    let _g = global_lock();
    register_patch_mapping([("ToyMLP", Replacement::of::<ZeroMlp>())], false).unwrap();
    clear_patch_mapping();
    assert!(get_patch_mapping().is_empty());
    register_patch_mapping([("ToyMLP", Replacement::of::<ZeroMlp>())], false).unwrap();
    reset_patch_mapping();
    assert_eq!(
        get_patch_mapping().len(),
        PatchSet::link_time().records().len()
    );
}

#[test]
fn hand_built_models_use_originals_unless_inside_apply_patches() {
    let _g = global_lock();
    register_patch_mapping([("ToyMLP", Replacement::of::<ZeroMlp>())], false).unwrap();
    let mlp_of = |model: &toy_model::ToyModel| {
        let layer = model.layers[0]
            .downcast_ref::<toy_model::ToyDecoderLayer>()
            .unwrap();
        layer.mlp.type_name()
    };
    // By hand: originals.
    let model = build_toy(&Builder::new(toy_weights())).unwrap();
    assert_eq!(mlp_of(&model), std::any::type_name::<toy_model::ToyMLP>());
    // Inside apply_patches: the registered patches (guard form).
    {
        let _scope = apply_patches();
        let model = build_toy(&Builder::new(toy_weights())).unwrap();
        assert_eq!(mlp_of(&model), std::any::type_name::<ZeroMlp>());
    }
    // Closure form.
    let model = PatchSet::global()
        .run_with(|| build_toy(&Builder::new(toy_weights())))
        .unwrap();
    assert_eq!(mlp_of(&model), std::any::type_name::<ZeroMlp>());
    // The scope ended with the guard.
    let model = build_toy(&Builder::new(toy_weights())).unwrap();
    assert_eq!(mlp_of(&model), std::any::type_name::<toy_model::ToyMLP>());
    // What from_pretrained/from_config do: the global registry, always.
    let model = build_toy(&Builder::new(toy_weights()).with_patches(PatchSet::global())).unwrap();
    assert_eq!(mlp_of(&model), std::any::type_name::<ZeroMlp>());
}

#[test]
fn a_snapshot_does_not_change_under_later_registrations() {
    let _g = global_lock();
    register_patch_mapping([("ToyMLP", Replacement::of::<ZeroMlp>())], false).unwrap();
    let snapshot = PatchSet::global();
    let scope = apply_patches();
    register_patch_mapping([("ToyRMSNorm", Replacement::of::<NoNorm>())], false).unwrap();
    assert_eq!(snapshot.records().len(), 1);
    assert_eq!(
        PatchSet::current().unwrap().records().len(),
        1,
        "the scope holds the registry as it was at entry"
    );
    drop(scope);
    assert_eq!(PatchSet::global().records().len(), 2);
}
