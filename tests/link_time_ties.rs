//! Two link-time patches that tie (same key kind, same priority, both registered "together" at
//! link time) with different replacements: a conflict, reported and never settled silently. A
//! higher priority settles it, and so does a run-time registration.

use patch_core::matching::Outcome;
use patch_core::{Build, Builder, Error, PatchSet, Replacement, Result, Site, patch};
use patchwork_tests::replacements::IdentityMlp;
use patchwork_tests::{build_toy, toy_weights};
use toy_model::{LayerArgs, Mlp, ToyDecoderLayer, ToyMLP};

/// One crate's replacement for every MLP.
#[patch("MLP$")]
pub struct FirstMlp;
impl Build for FirstMlp {
    type Slot = dyn Mlp;
    fn build(_: &Builder, _: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
        Ok(Box::new(FirstMlp))
    }
}
impl Mlp for FirstMlp {
    fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        Ok(x.clone())
    }
}

/// Another crate's, with the same key and priority.
#[patch("MLP$")]
pub struct SecondMlp;
impl Build for SecondMlp {
    type Slot = dyn Mlp;
    fn build(_: &Builder, _: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
        Ok(Box::new(SecondMlp))
    }
}
impl Mlp for SecondMlp {
    fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        Ok(x.clone())
    }
}

/// Decoder layers that pass their input through.
macro_rules! passthrough_layer {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        pub struct $name;
        impl Build for $name {
            type Slot = dyn toy_model::Block;
            fn build(_: &Builder, _: LayerArgs<'_>) -> Result<Box<dyn toy_model::Block>> {
                Ok(Box::new($name))
            }
        }
        impl toy_model::Block for $name {
            fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
                Ok(x.clone())
            }
        }
    };
}

passthrough_layer!(
    /// A pattern with a high priority.
    #[patch("DecoderLayer", priority = 10, name = "preferred")]
    PreferredLayer
);
passthrough_layer!(
    /// An exact name with a low priority: it still wins, exact names come first.
    #[patch("ToyDecoderLayer", priority = -5)]
    ExactLayer
);

#[test]
fn a_link_time_tie_is_a_reported_conflict() {
    let set = PatchSet::link_time();
    let res = set.resolve(ToyMLP::info());
    assert!(matches!(res.outcome, Outcome::Conflict(_)), "{res:?}");

    let explain = set.explain([ToyMLP::info()]);
    assert!(!explain.is_ok());
    let text = explain.to_string();
    assert!(
        text.contains("CONFLICT") && text.contains("FirstMlp") && text.contains("SecondMlp"),
        "{text}"
    );

    // Without the decoder-layer patches, so the MLPs get built.
    let mut set = set;
    set.unregister_patch_mapping(["DecoderLayer", "ToyDecoderLayer"])
        .unwrap();
    let err = build_toy(&Builder::new(toy_weights()).with_patches(set))
        .err()
        .expect("the tie stops the build");
    let Error::Build { path, site, source } = &err else {
        panic!("{err}")
    };
    assert_eq!((path.as_str(), *site), ("layers.0.mlp", "ToyMLP"));
    assert!(matches!(**source, Error::Ambiguous { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("priority") && msg.contains("layers.0.mlp"),
        "{msg}"
    );
}

#[test]
fn a_run_time_registration_settles_a_tie() {
    let mut set = PatchSet::link_time();
    set.register_patch_mapping([("ToyMLP", Replacement::of::<IdentityMlp>())], false)
        .unwrap();
    let res = set.resolve(ToyMLP::info());
    assert!(matches!(&res.outcome, Outcome::Patched { record, .. } if record.key() == "ToyMLP"));
}

#[test]
fn exact_beats_a_higher_priority_pattern_and_priority_is_recorded() {
    let set = PatchSet::link_time();
    let res = set.resolve(ToyDecoderLayer::info());
    let Outcome::Patched { record, .. } = &res.outcome else {
        panic!("{res:?}")
    };
    assert_eq!(record.replacement().short_name(), "ExactLayer");
    assert_eq!(record.priority(), -5);
    let preferred = set
        .records()
        .iter()
        .find(|r| r.key() == "DecoderLayer")
        .unwrap();
    assert_eq!(preferred.priority(), 10);
    assert_eq!(preferred.label(), Some("preferred"));
}
