//! Output capture: hidden states and attention probabilities against transformers, recorders
//! on any site that follow replacements, no state shared between passes or threads, and the
//! patched-against-original comparison.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use common::{Fixture, check_close, fixtures, ids};
use patch_core::{Build, Builder, PatchSet, Replacement};
use patchwork_models::compare::compare_models;
use patchwork_models::decoder::{
    Attention, AttentionArgs, LayerContext, Record, Recorders, Selection,
};
use patchwork_models::replacements::{FusedQkvAttention, patch_set};
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};

fn load(f: &Fixture, patches: PatchSet) -> CausalLM {
    AutoModelForCausalLM::from_pretrained(&f.dir, &LoadOptions::default().with_patches(patches))
        .unwrap()
}

fn training_reference(f: &Fixture) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(f.dir.join("training_reference.safetensors"), &Device::Cpu)
        .unwrap()
}

#[test]
fn hidden_states_and_attention_probabilities_match_transformers() {
    for f in fixtures() {
        let r = training_reference(&f);
        for trainable in [false, true] {
            let mut options = LoadOptions::default().with_patches(PatchSet::empty());
            if trainable {
                options = options.trainable();
            }
            let model = AutoModelForCausalLM::from_pretrained(&f.dir, &options).unwrap();
            let layers = model.config().num_hidden_layers;
            let out = model
                .forward_with(
                    &r["input_ids"],
                    None,
                    None,
                    &ForwardOptions {
                        output_hidden_states: Selection::All,
                        output_attentions: Selection::All,
                        ..ForwardOptions::default()
                    },
                )
                .unwrap();
            assert_eq!(out.hidden_states.len(), layers + 1, "{}", f.name);
            assert_eq!(out.attentions.len(), layers, "{}", f.name);
            let mut worst = 0f32;
            for (i, h) in &out.hidden_states {
                let d = check_close(
                    &format!("{}: hidden_states.{i}", f.name),
                    h,
                    &r[&format!("hidden_states.{i}")],
                    None,
                )
                .unwrap();
                worst = worst.max(d);
            }
            for (l, a) in &out.attentions {
                let d = check_close(
                    &format!("{}: attentions.{l}", f.name),
                    a,
                    &r[&format!("attentions.{l}")],
                    None,
                )
                .unwrap();
                worst = worst.max(d);
            }
            // Asking for them changes nothing else.
            let plain = model.forward(&r["input_ids"], None).unwrap();
            check_close("logits", out.logits.as_ref().unwrap(), &plain, None).unwrap();
            eprintln!(
                "{} (trainable {trainable}): {} hidden states, {} attention maps, max diff {worst:e}",
                f.name,
                layers + 1,
                layers
            );
        }
    }
}

#[test]
fn only_selected_states_are_kept_and_negative_indices_count_from_the_end() {
    let f = fixtures().into_iter().next().unwrap();
    let model = load(&f, PatchSet::empty());
    let layers = model.config().num_hidden_layers;
    let out = model
        .forward_with(
            f.get("input_ids"),
            None,
            None,
            &ForwardOptions {
                output_hidden_states: Selection::Only(vec![0, -1]),
                output_attentions: Selection::Only(vec![-1]),
                ..ForwardOptions::default()
            },
        )
        .unwrap();
    assert_eq!(
        out.hidden_states.keys().copied().collect::<Vec<_>>(),
        [0, layers]
    );
    assert_eq!(
        out.attentions.keys().copied().collect::<Vec<_>>(),
        [layers - 1]
    );
    let none = model
        .forward_with(f.get("input_ids"), None, None, &ForwardOptions::default())
        .unwrap();
    assert!(none.hidden_states.is_empty() && none.attentions.is_empty() && none.records.is_empty());
    let err = model
        .forward_with(
            f.get("input_ids"),
            None,
            None,
            &ForwardOptions {
                output_hidden_states: Selection::Only(vec![layers as isize + 1]),
                ..ForwardOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("output_hidden_states") && err.contains("out of range"),
        "{err}"
    );
}

fn record_attention(model: &CausalLM, input: &Tensor) -> BTreeMap<String, Tensor> {
    let out = model
        .forward_with(
            input,
            None,
            None,
            &ForwardOptions {
                recorders: Recorders::sites([".*Attention"]).unwrap(),
                ..ForwardOptions::default()
            },
        )
        .unwrap();
    out.records
        .iter()
        .map(|r| match &r.record {
            Record::Tensor(t) => (r.path.clone(), t.clone()),
            other => panic!("{}: {other:?}", r.path),
        })
        .collect()
}

/// A replacement fills the same slot, so it is recorded the same way: `.*Attention` on the
/// fused-QKV model and on the default one gives the same values, at the same paths.
#[test]
fn recorders_follow_replacements() {
    for f in fixtures() {
        let default = load(&f, PatchSet::empty());
        let fused = load(&f, patch_set("fused-qkv").unwrap());
        assert!(
            fused.report().patched() == fused.config().num_hidden_layers,
            "{}: every attention is fused",
            f.name
        );
        let a = record_attention(&default, f.get("input_ids"));
        let b = record_attention(&fused, f.get("input_ids"));
        assert_eq!(a.len(), default.config().num_hidden_layers, "{}", f.name);
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (path, t) in &a {
            check_close(&format!("{}: {path}", f.name), &b[path], t, None).unwrap();
            assert!(path.ends_with(".self_attn"), "{path}");
        }
    }
}

/// Records are typed by slot, and the routing recorded under forced experts is the forced one.
#[test]
fn router_records_are_router_outputs_and_follow_forced_experts() {
    for f in fixtures()
        .into_iter()
        .filter(|f| f.config.get("num_experts").is_some())
    {
        let r = training_reference(&f);
        let forced: BTreeMap<usize, Tensor> = r
            .iter()
            .filter_map(|(k, v)| {
                Some((k.strip_prefix("replay_experts.")?.parse().ok()?, v.clone()))
            })
            .collect();
        for trainable in [false, true] {
            let mut options = LoadOptions::default().with_patches(PatchSet::empty());
            if trainable {
                options = options.trainable();
            }
            let model = AutoModelForCausalLM::from_pretrained(&f.dir, &options).unwrap();
            let out = model
                .forward_with(
                    &r["input_ids"],
                    None,
                    None,
                    &ForwardOptions {
                        recorders: Recorders::sites(["TopKRouter$", "RMSNorm"]).unwrap(),
                        forced_experts: forced.clone(),
                        ..ForwardOptions::default()
                    },
                )
                .unwrap();
            for (&layer, ids_forced) in &forced {
                let path = format!("model.layers.{layer}.mlp.gate");
                let router = out
                    .records
                    .router(&path)
                    .unwrap_or_else(|| panic!("{path}"));
                assert_eq!(ids(&router.indices), ids(ids_forced), "{} {path}", f.name);
                assert_eq!(router.logits.track_op(), trainable);
            }
            let norm = out
                .records
                .tensor("model.norm")
                .expect("final norm recorded");
            assert_eq!(norm.dims()[2], model.config().hidden_size);
            assert!(out.records.iter().all(|rec| match rec.site {
                s if s.ends_with("TopKRouter") => matches!(rec.record, Record::Router(_)),
                _ => matches!(rec.record, Record::Tensor(_)),
            }));
        }
    }
}

/// Nothing is shared between passes: two threads running one model with different recorders
/// each get their own records.
#[test]
fn two_threads_with_different_recorders_never_see_each_others_records() {
    let f = fixtures()
        .into_iter()
        .find(|f| f.name.contains("moe"))
        .unwrap();
    let model = Arc::new(load(&f, PatchSet::empty()));
    let input = f.get("input_ids").clone();
    let run = |keys: &'static str, model: Arc<CausalLM>, input: Tensor| {
        std::thread::spawn(move || {
            let mut sites = Vec::new();
            for _ in 0..20 {
                let out = model
                    .forward_with(
                        &input,
                        None,
                        None,
                        &ForwardOptions {
                            recorders: Recorders::sites([keys]).unwrap(),
                            ..ForwardOptions::default()
                        },
                    )
                    .unwrap();
                sites.extend(out.records.iter().map(|r| r.site));
            }
            sites
        })
    };
    let a = run("RMSNorm$", model.clone(), input.clone());
    let b = run("Attention$", model.clone(), input);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert!(
        !a.is_empty() && a.iter().all(|s| s.ends_with("RMSNorm")),
        "{a:?}"
    );
    assert!(
        !b.is_empty() && b.iter().all(|s| s.ends_with("Attention")),
        "{b:?}"
    );
}

/// Upstream's recorders are class-level state that patching rewrites for good; here building a
/// patched model first changes nothing about what a later unpatched one records.
#[test]
fn a_patched_model_built_first_does_not_change_what_an_unpatched_one_records() {
    for f in fixtures() {
        let patched = load(&f, patch_set("fused-qkv").unwrap());
        drop(patched);
        let plain = load(&f, PatchSet::empty());
        let recorded = record_attention(&plain, f.get("input_ids"));
        assert_eq!(
            recorded.len(),
            plain.config().num_hidden_layers,
            "{}",
            f.name
        );
    }
}

/// An attention that computes something else: its output scaled.
struct Skewed(Box<dyn Attention>);
impl Build for Skewed {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> patch_core::Result<Box<dyn Attention>> {
        Ok(Box::new(Self(FusedQkvAttention::build(
            &b.with_transforms_of::<FusedQkvAttention>(),
            args,
        )?)))
    }
}
impl Attention for Skewed {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        let y = self.0.forward(x, ctx)?;
        if ctx.layer_idx == 1 { y * 1.01 } else { Ok(y) }
    }
}

#[test]
fn comparing_a_patched_model_finds_where_it_first_diverges() {
    for f in fixtures() {
        let original = load(&f, PatchSet::empty());
        let fused = load(&f, patch_set("fused-qkv").unwrap());
        let same = compare_models(&fused, &original, f.get("input_ids"), None, 1e-4).unwrap();
        assert!(same.is_match(), "{}:\n{same}", f.name);
        // The fused attention builds its q/k/v/o projections and head norms directly, not as
        // sites: up to 6 sites per layer the original has and it lacks.
        assert!(
            same.sites.len()
                >= original.report().sites().len() - 6 * original.config().num_hidden_layers
        );
        let skewed = load(
            &f,
            PatchSet::from_mapping([(".*Attention", Replacement::of::<Skewed>())]).unwrap(),
        );
        let diff = compare_models(&skewed, &original, f.get("input_ids"), None, 1e-4).unwrap();
        let first = diff
            .first_divergence()
            .unwrap_or_else(|| panic!("{}:\n{diff}", f.name));
        assert_eq!(
            first.path, "model.layers.1.self_attn",
            "{}:\n{diff}",
            f.name
        );
        let shown = diff.to_string();
        assert!(shown.contains("first divergence") && shown.contains("model.layers.1.self_attn"));
        eprintln!(
            "{}: first divergence at {} ({:.2e})",
            f.name, first.path, first.max_abs_diff
        );
    }
}
