//! The matching rules, on explicit `PatchSet`s (no global state): exact beats pattern,
//! search semantics, priority, registration order, slot-aware matching (the upstream page's
//! BertAttention container case), and what `explain` and the build report say.

use patch_core::ModuleExt;
use patch_core::matching::{Outcome, Rule, SkipReason};
use patch_core::{Builder, Error, Module, PatchSet, Replacement, Site};
use patchwork_tests::replacements::{DoubledAttention, IdentityMlp, NoNorm, ZeroMlp};
use patchwork_tests::{build_toy, toy_input, toy_weights};
use toy_model::{BertAttention, BertSelfAttention, ToyDecoderLayer, ToyMLP, ToyRMSNorm};

fn decoder_layer(model: &toy_model::ToyModel, i: usize) -> &ToyDecoderLayer {
    model.layers[i]
        .downcast_ref::<ToyDecoderLayer>()
        .expect("layers are ToyDecoderLayer")
}

fn inner_attention(layer: &ToyDecoderLayer) -> &dyn Module {
    let block = layer
        .attention
        .downcast_ref::<BertAttention>()
        .expect("the container is not patched");
    &*block.inner
}

fn winner(set: &PatchSet, site: &patch_core::SiteInfo) -> Option<(String, Rule)> {
    match &set.resolve(site).outcome {
        Outcome::Patched { record, rule } => {
            Some((record.replacement().short_name().to_string(), *rule))
        }
        Outcome::Original => None,
        Outcome::Conflict(c) => panic!("unexpected conflict: {c:?}"),
    }
}

#[test]
fn a_pattern_patches_the_inner_attention_and_skips_the_container() {
    let set =
        PatchSet::from_mapping([(".*Attention", Replacement::of::<DoubledAttention>())]).unwrap();

    let inner = set.resolve(BertSelfAttention::info());
    assert!(matches!(
        &inner.outcome,
        Outcome::Patched {
            rule: Rule::Pattern,
            ..
        }
    ));

    let container = set.resolve(BertAttention::info());
    assert!(
        matches!(container.outcome, Outcome::Original),
        "the container must stay intact"
    );
    assert_eq!(container.skipped.len(), 1);
    assert!(matches!(
        container.skipped[0].reason,
        SkipReason::SlotMismatch {
            replacement_slot: "Attention"
        }
    ));

    // The model still has its container, wrapping the replacement.
    let model = build_toy(&Builder::new(toy_weights()).with_patches(set.clone())).unwrap();
    for i in 0..model.layers.len() {
        assert!(inner_attention(decoder_layer(&model, i)).is::<DoubledAttention>());
    }
    model.forward(&toy_input()).unwrap();

    // explain names the skip and its reason.
    let explain = set.explain([BertAttention::info(), BertSelfAttention::info()]);
    let text = explain.to_string();
    assert!(text.contains("BertAttention"), "{text}");
    assert!(text.contains("skipped \".*Attention\" -> DoubledAttention (pattern): replacement fills slot Attention"), "{text}");
    assert!(explain.is_ok());
}

#[test]
fn an_exact_name_beats_a_pattern() {
    let set = PatchSet::from_mapping([
        ("MLP", Replacement::of::<ZeroMlp>()),
        ("ToyMLP", Replacement::of::<IdentityMlp>()),
    ])
    .unwrap();
    assert_eq!(
        winner(&set, ToyMLP::info()),
        Some(("IdentityMlp".into(), Rule::Exact))
    );
    let res = set.resolve(ToyMLP::info());
    assert!(matches!(
        &res.skipped[0].reason,
        SkipReason::Overridden {
            why: "exact name wins over pattern",
            ..
        }
    ));
}

#[test]
fn patterns_search_anywhere_unless_anchored() {
    let unanchored = PatchSet::from_mapping([("MLP", Replacement::of::<ZeroMlp>())]).unwrap();
    assert_eq!(
        winner(&unanchored, ToyMLP::info()),
        Some(("ZeroMlp".into(), Rule::Pattern))
    );
    let anchored = PatchSet::from_mapping([("^MLP$", Replacement::of::<ZeroMlp>())]).unwrap();
    assert_eq!(winner(&anchored, ToyMLP::info()), None);
    let suffix = PatchSet::from_mapping([("MLP$", Replacement::of::<ZeroMlp>())]).unwrap();
    assert_eq!(
        winner(&suffix, ToyMLP::info()),
        Some(("ZeroMlp".into(), Rule::Pattern))
    );
    // Matching is case-sensitive, as upstream.
    let lower = PatchSet::from_mapping([("mlp", Replacement::of::<ZeroMlp>())]).unwrap();
    assert_eq!(winner(&lower, ToyMLP::info()), None);
}

#[test]
fn higher_priority_wins_then_later_registration() {
    let mut set = PatchSet::from_mapping([
        ("Toy", Replacement::of::<ZeroMlp>().with_priority(5)),
        ("MLP$", Replacement::of::<IdentityMlp>()),
    ])
    .unwrap();
    assert_eq!(
        winner(&set, ToyMLP::info()),
        Some(("ZeroMlp".into(), Rule::Pattern))
    );
    let res = set.resolve(ToyMLP::info());
    assert!(matches!(
        &res.skipped[0].reason,
        SkipReason::Overridden {
            why: "higher priority",
            ..
        }
    ));

    // Equal priorities: the later registration wins.
    set.register_patch_mapping([("Toy", Replacement::of::<ZeroMlp>())], true)
        .unwrap();
    assert_eq!(
        winner(&set, ToyMLP::info()),
        Some(("ZeroMlp".into(), Rule::Pattern))
    );
    set.register_patch_mapping([("MLP$", Replacement::of::<IdentityMlp>())], true)
        .unwrap();
    assert_eq!(
        winner(&set, ToyMLP::info()),
        Some(("IdentityMlp".into(), Rule::Pattern))
    );
    let res = set.resolve(ToyMLP::info());
    assert!(matches!(
        &res.skipped[0].reason,
        SkipReason::Overridden {
            why: "registered later",
            ..
        }
    ));
}

#[test]
fn patterns_only_apply_to_sites_of_their_slot() {
    // "Toy" matches ToyMLP, ToyRMSNorm and ToyDecoderLayer; NoNorm fills only the norm slot.
    let set = PatchSet::from_mapping([("^Toy", Replacement::of::<NoNorm>())]).unwrap();
    assert_eq!(
        winner(&set, ToyRMSNorm::info()),
        Some(("NoNorm".into(), Rule::Pattern))
    );
    assert_eq!(winner(&set, ToyMLP::info()), None);
    assert_eq!(winner(&set, ToyDecoderLayer::info()), None);
    let model = build_toy(&Builder::new(toy_weights()).with_patches(set)).unwrap();
    assert!(model.norm.is::<NoNorm>());
    assert!((&*decoder_layer(&model, 0).mlp as &dyn Module).is::<ToyMLP>());
}

#[test]
fn an_exact_name_of_another_slot_is_an_error_not_a_silent_skip() {
    let err = PatchSet::from_mapping([("ToyMLP", Replacement::of::<NoNorm>())]).unwrap_err();
    assert!(matches!(err, Error::SlotMismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("ToyMLP") && msg.contains("slot Mlp") && msg.contains("slot Norm"),
        "{msg}"
    );
}

#[test]
fn the_build_report_says_what_was_built_where() {
    let set =
        PatchSet::from_mapping([("BertSelfAttention", Replacement::of::<DoubledAttention>())])
            .unwrap();
    let builder = Builder::new(toy_weights()).with_patches(set);
    build_toy(&builder).unwrap();
    let report = builder.report();
    let site = report
        .at("layers.1.attention.self")
        .expect("inner attention of layer 1");
    assert_eq!(site.site, "BertSelfAttention");
    assert_eq!(site.module, std::any::type_name::<DoubledAttention>());
    assert_eq!(
        site.patch,
        Some((Rule::Exact, "BertSelfAttention".to_string()))
    );
    assert_eq!(report.patched(), 2);
    // Repeated layers fold into one row: both layers' inner attentions were patched alike.
    assert!(
        report.to_string().contains("layers.0-1.attention.self"),
        "{report}"
    );
    // Parents are listed before their children.
    let paths: Vec<&str> = report.sites().iter().map(|s| s.path.as_str()).collect();
    let layer = paths.iter().position(|p| *p == "layers.0").unwrap();
    let inner = paths
        .iter()
        .position(|p| *p == "layers.0.attention.self")
        .unwrap();
    assert!(layer < inner, "{paths:?}");
}

#[test]
fn explain_lists_every_site_rule_and_patterns_matching_nothing() {
    let set = PatchSet::from_mapping([
        ("ToyMLP", Replacement::of::<ZeroMlp>()),
        ("^Mistral", Replacement::of::<ZeroMlp>()),
    ])
    .unwrap();
    let sites = [ToyMLP::info(), ToyRMSNorm::info()];
    let explain = set.explain(sites);
    assert_eq!(explain.sites().len(), 2);
    assert!(matches!(
        explain.site("ToyRMSNorm").unwrap().outcome,
        Outcome::Original
    ));
    let unmatched: Vec<&str> = explain.unmatched().iter().map(|r| r.key()).collect();
    assert_eq!(unmatched, ["^Mistral"]);
    let text = explain.to_string();
    assert!(
        text.contains("patch explain: 2 sites, 2 patches (0 link-time, 2 run-time)"),
        "{text}"
    );
    assert!(text.contains("exact \"ToyMLP\" (run time)"), "{text}");
    assert!(
        text.contains("patches matching no site above:\n  \"^Mistral\" -> ZeroMlp (run time)"),
        "{text}"
    );
}

#[test]
fn patched_and_original_models_compute_differently_and_deterministically() {
    let original = build_toy(&Builder::new(toy_weights()))
        .unwrap()
        .forward(&toy_input())
        .unwrap();
    let again = build_toy(&Builder::new(toy_weights()))
        .unwrap()
        .forward(&toy_input())
        .unwrap();
    patchwork_testing::assert_close(
        &again,
        &original,
        patchwork_testing::Tolerance::absolute(0.0),
        "seeded random weights are deterministic",
    );
    let set =
        PatchSet::from_mapping([("BertSelfAttention", Replacement::of::<DoubledAttention>())])
            .unwrap();
    let patched = build_toy(&Builder::new(toy_weights()).with_patches(set))
        .unwrap()
        .forward(&toy_input())
        .unwrap();
    patchwork_testing::assert_differs(
        &patched,
        &original,
        1e-4,
        "doubling attention changes the output",
    );
}
