//! Path rules: patches restricted to module paths (a regex over the full path, `re.search`
//! semantics), their place in the matching order (a path rule ranks before a name alone, then
//! exact, priority, registration), ties, the chain `build_original` descends, and what
//! `explain` and the build report say, folded over repeated layers.

use patch_core::matching::{Outcome, Rule, SkipReason};
use patch_core::{
    Build, Builder, Error, ModuleExt, PatchKey, PatchSet, Replacement, Result, Site, patch,
};
use patchwork_tests::replacements::{IdentityMlp, ZeroMlp};
use patchwork_tests::{build_toy, toy_weights};
use toy_model::{LayerArgs, Mlp, ToyDecoderLayer, ToyMLP, ToyModel};

fn mlp_of(model: &ToyModel, layer: usize) -> &dyn Mlp {
    &*model.layers[layer]
        .downcast_ref::<ToyDecoderLayer>()
        .unwrap()
        .mlp
}

fn winner_at(set: &PatchSet, path: &str) -> Option<(String, Rule)> {
    match &set.resolve_at(ToyMLP::info(), path).outcome {
        Outcome::Patched { record, rule } => Some((record.replacement().short_name(), *rule)),
        Outcome::Original => None,
        Outcome::Conflict(c) => panic!("unexpected conflict at {path}: {c:?}"),
    }
}

#[test]
fn a_path_rule_applies_only_where_its_regex_matches() {
    let set = PatchSet::from_mapping([(
        PatchKey::new("ToyMLP").with_path(r"layers\.1\.mlp$"),
        Replacement::of::<ZeroMlp>(),
    )])
    .unwrap();
    let b = Builder::new(toy_weights()).with_patches(set.clone());
    let model = build_toy(&b).unwrap();
    assert!(mlp_of(&model, 0).is::<ToyMLP>());
    assert!(mlp_of(&model, 1).is::<ZeroMlp>());
    // re.search semantics: anywhere in the path; anchored here, so layer 11 would not match.
    assert_eq!(winner_at(&set, "layers.11.mlp"), None);
    assert_eq!(
        winner_at(&set, "model.layers.1.mlp").map(|w| w.1),
        Some(Rule::Exact)
    );
    let report = b.report();
    assert_eq!(
        report.at("layers.1.mlp").unwrap().winner().unwrap().path(),
        Some(r"layers\.1\.mlp$")
    );
    assert!(report.at("layers.0.mlp").unwrap().winner().is_none());
}

#[test]
fn a_path_rule_ranks_before_a_name_alone_then_exact_priority_and_registration() {
    // An exact name everywhere, a pattern restricted to layer 1: the path rule wins there.
    let mut set = PatchSet::from_mapping([
        (PatchKey::new("ToyMLP"), Replacement::of::<IdentityMlp>()),
        (
            PatchKey::new("MLP$").with_path(r"layers\.1\."),
            Replacement::of::<ZeroMlp>(),
        ),
    ])
    .unwrap();
    assert_eq!(
        winner_at(&set, "layers.0.mlp"),
        Some(("IdentityMlp".into(), Rule::Exact))
    );
    assert_eq!(
        winner_at(&set, "layers.1.mlp"),
        Some(("ZeroMlp".into(), Rule::Pattern))
    );
    let at1 = set.resolve_at(ToyMLP::info(), "layers.1.mlp");
    assert!(matches!(
        &at1.skipped[0].reason,
        SkipReason::Overridden {
            why: "a path rule wins over a name alone",
            ..
        }
    ));
    // Two path rules: exact beats pattern.
    set.register_patch_mapping(
        [(
            PatchKey::new("ToyMLP").with_path(r"\.1\."),
            Replacement::of::<IdentityMlp>(),
        )],
        false,
    )
    .unwrap();
    assert_eq!(
        winner_at(&set, "layers.1.mlp"),
        Some(("IdentityMlp".into(), Rule::Exact))
    );
    // Equal rules: higher priority, then later registration.
    let mut set = PatchSet::from_mapping([(
        PatchKey::new("ToyMLP").with_path("mlp"),
        Replacement::of::<ZeroMlp>().with_priority(5),
    )])
    .unwrap();
    set.register_patch_mapping(
        [(
            PatchKey::new("ToyMLP").with_path("layers"),
            Replacement::of::<IdentityMlp>(),
        )],
        false,
    )
    .unwrap();
    assert_eq!(
        winner_at(&set, "layers.0.mlp"),
        Some(("ZeroMlp".into(), Rule::Exact))
    );
    set.register_patch_mapping(
        [(
            PatchKey::new("ToyMLP").with_path("layers"),
            Replacement::of::<IdentityMlp>().with_priority(5),
        )],
        true,
    )
    .unwrap();
    let r = set.resolve_at(ToyMLP::info(), "layers.0.mlp");
    assert_eq!(
        winner_at(&set, "layers.0.mlp"),
        Some(("IdentityMlp".into(), Rule::Exact))
    );
    assert!(matches!(
        &r.skipped[0].reason,
        SkipReason::Overridden {
            why: "registered later",
            ..
        }
    ));
    // The chain build_original descends: every applicable candidate, winner first.
    let chain: Vec<String> = r
        .chain
        .iter()
        .map(|(rec, _)| rec.replacement().short_name())
        .collect();
    assert_eq!(chain, ["IdentityMlp", "ZeroMlp"]);
}

/// Two link-time path rules of equal rank building different types tie at the paths both
/// match, and only there.
mod ties {
    use super::*;

    #[patch("ToyMLP", path = r"layers\.1\.")]
    pub struct LeftMlp;
    #[patch("ToyMLP", path = r"\.1\.mlp")]
    pub struct RightMlp;

    macro_rules! zero_mlp {
        ($t:ident) => {
            impl Build for $t {
                type Slot = dyn Mlp;
                fn build(_: &Builder, _: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
                    Ok(Box::new($t))
                }
            }
            impl Mlp for $t {
                fn forward(
                    &self,
                    x: &candle_core::Tensor,
                ) -> candle_core::Result<candle_core::Tensor> {
                    x.zeros_like()
                }
            }
        };
    }
    zero_mlp!(LeftMlp);
    zero_mlp!(RightMlp);

    #[test]
    fn equal_link_time_path_rules_conflict_where_both_match() {
        let set = PatchSet::link_time();
        assert!(matches!(
            set.resolve_at(ToyMLP::info(), "layers.1.mlp").outcome,
            Outcome::Conflict(_)
        ));
        assert!(matches!(
            set.resolve_at(ToyMLP::info(), "layers.0.mlp").outcome,
            Outcome::Original
        ));
        let e = build_toy(&Builder::new(toy_weights()).with_patches(set))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("layers.1.mlp") && e.contains("equal priority"),
            "{e}"
        );
    }
}

#[test]
fn run_time_path_keys_register_unregister_and_show() {
    let key = PatchKey::new("ToyMLP").with_path(r"layers\.0\.");
    let mut set = PatchSet::from_mapping([(key.clone(), Replacement::of::<ZeroMlp>())]).unwrap();
    // The same name without a path is another key; with the same path, it exists already.
    set.register_patch_mapping([("ToyMLP", Replacement::of::<IdentityMlp>())], false)
        .unwrap();
    let e = set
        .register_patch_mapping([(key.clone(), Replacement::of::<IdentityMlp>())], false)
        .unwrap_err();
    assert!(
        matches!(&e, Error::KeyExists { key, .. } if key == r"ToyMLP at /layers\.0\./"),
        "{e}"
    );
    let mapping = set.mapping();
    assert_eq!(mapping.get(&key).count(), 1);
    assert_eq!(mapping.get("ToyMLP").count(), 1);
    assert!(
        mapping.to_string().contains(r#""ToyMLP" at /layers\.0\./"#),
        "{mapping}"
    );
    set.unregister_patch_mapping([&key]).unwrap();
    assert!(!set.mapping().contains_key(&key) && set.mapping().contains_key("ToyMLP"));
    let e = set.unregister_patch_mapping([&key]).unwrap_err();
    assert!(matches!(&e, Error::UnknownKey { .. }), "{e}");
    // An invalid path regex is an error naming it, and nothing is registered.
    let e = set
        .register_patch_mapping(
            [(
                PatchKey::new("ToyMLP").with_path("layers.("),
                Replacement::of::<ZeroMlp>(),
            )],
            false,
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidPattern { key, .. } if key.contains("layers.(")),
        "{e}"
    );
    assert_eq!(set.mapping().len(), 1);
}

#[test]
fn explain_lists_path_rules_as_conditional_and_the_report_folds_layers() {
    let set = PatchSet::from_mapping([(
        PatchKey::new("ToyMLP").with_path(r"layers\.1\."),
        Replacement::of::<ZeroMlp>(),
    )])
    .unwrap();
    let explain = set.explain([ToyMLP::info()]);
    let text = explain.to_string();
    assert!(text.contains("where the path matches"), "{text}");
    assert!(explain.unmatched().is_empty(), "{text}");
    let resolution = set.resolve(ToyMLP::info());
    assert!(matches!(resolution.outcome, Outcome::Original));
    assert_eq!(resolution.conditional.len(), 1);

    let b = Builder::new(toy_weights()).with_patches(set);
    build_toy(&b).unwrap();
    let report = b.report().to_string();
    // Layer 0 and layer 1 differ at the MLP, so its rows stay apart; the norms fold.
    assert!(
        report.contains("layers.0.mlp ") && report.contains("layers.1.mlp "),
        "{report}"
    );
    assert!(report.contains("layers.0-1.input_layernorm"), "{report}");
}

/// A decorator keyed by path wraps whatever the next rule builds, which wraps the site's own
/// type: each `build_original` descends one step of the chain.
#[test]
fn decorators_compose_down_the_chain() {
    use candle_core::Tensor;
    struct Plus(Box<dyn Mlp>, f64);
    impl Mlp for Plus {
        fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
            self.0.forward(x)? + self.1
        }
    }
    struct PlusOne;
    struct PlusTen;
    impl Build for PlusOne {
        type Slot = dyn Mlp;
        fn build(b: &Builder, args: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
            Ok(Box::new(Plus(b.build_original(args)?, 1.0)))
        }
    }
    impl Build for PlusTen {
        type Slot = dyn Mlp;
        fn build(b: &Builder, args: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
            Ok(Box::new(Plus(b.build_original(args)?, 10.0)))
        }
    }
    impl Build for Plus {
        type Slot = dyn Mlp;
        fn build(_: &Builder, _: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
            Err(patch_core::Error::other("not registered"))
        }
    }
    let set = PatchSet::from_mapping([
        (PatchKey::new("ToyMLP"), Replacement::of::<PlusTen>()),
        (
            PatchKey::new("ToyMLP").with_path(r"layers\.1\."),
            Replacement::of::<PlusOne>(),
        ),
    ])
    .unwrap();
    let b = Builder::new(toy_weights()).with_patches(set);
    let model = build_toy(&b).unwrap();
    let plain = build_toy(&Builder::new(toy_weights()).with_patches(PatchSet::empty())).unwrap();
    let x = patchwork_tests::toy_input();
    let diff = |layer| -> f32 {
        let a = mlp_of(&model, layer).forward(&x).unwrap();
        let o = mlp_of(&plain, layer).forward(&x).unwrap();
        let d: Vec<f32> = (a - o).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(d.iter().all(|v| v.is_finite()));
        d.iter().sum::<f32>() / d.len() as f32
    };
    assert!((diff(0) - 10.0).abs() < 1e-4, "{}", diff(0));
    assert!((diff(1) - 11.0).abs() < 1e-4, "{}", diff(1));
    let site = b.report().at("layers.1.mlp").cloned().unwrap();
    assert!(site.module.ends_with("PlusOne"), "{}", site.module);
    assert_eq!(site.wraps.len(), 2, "{:?}", site.wraps);
    assert!(site.wraps[0].ends_with("PlusTen") && site.wraps[1].ends_with("ToyMLP"));
}
