//! Parity with transformers: one suite, run for every reference checkpoint in `fixtures/`
//! (a folder with `config.json`, the weights and `reference.safetensors`) and so for every
//! family that has one. A new family gets every check by adding its fixture folder.
//!
//! Tolerance: `max |ours - ref| <= 1e-4 * max(1, max |ref|)` over real tokens; greedy ids and
//! router top-k ids identical.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{Fixture, check_close, fixtures, ids};
use patch_core::{Build, Builder, PatchSet, Replacement};
use patchwork_models::decoder::{Attention, AttentionArgs, LayerContext};
use patchwork_models::family::families;
use patchwork_models::llama::LlamaAttention;
use patchwork_models::qwen2_moe::Qwen2MoeAttention;
use patchwork_models::qwen3::Qwen3Attention;
use patchwork_models::qwen3_moe::Qwen3MoeAttention;
use patchwork_models::{
    AutoModelForCausalLM, CausalLM, ForwardOptions, GenerationConfig, LoadOptions,
};

/// Loads a fixture as `from_pretrained` does, with no patches (the suite checks the models
/// themselves; the patching tests check replacements).
fn load(f: &Fixture) -> Result<CausalLM, String> {
    let options = LoadOptions::default().with_patches(PatchSet::empty());
    AutoModelForCausalLM::from_pretrained(&f.dir, &options)
        .map_err(|e| format!("loading failed: {e}"))
}

/// Runs `check` on every fixture and fails with every fixture's error at once.
fn for_each_fixture(check: impl Fn(&Fixture) -> Result<String, String>) {
    let mut failures = Vec::new();
    for f in fixtures() {
        match check(&f) {
            Ok(summary) => eprintln!("{}: {summary}", f.name),
            Err(e) => failures.push(format!("{}: {e}", f.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_registered_family_has_a_reference_checkpoint() {
    let fixtures = fixtures();
    for family in families() {
        assert!(
            fixtures.iter().any(|f| f.model_type() == family.model_type),
            "family {} has no reference checkpoint in fixtures/",
            family.model_type
        );
    }
}

fn plain_logits(f: &Fixture, model: &CausalLM) -> Result<String, String> {
    let logits = model
        .forward(f.get("input_ids"), None)
        .map_err(|e| e.to_string())?;
    let d = check_close("logits", &logits, f.get("logits"), None)?;
    Ok(format!("logits max diff {d:e}"))
}

#[test]
fn logits_match_reference() {
    for_each_fixture(|f| plain_logits(f, &load(f)?));
}

#[test]
fn padded_logits_match_reference_on_real_tokens() {
    for_each_fixture(|f| {
        let model = load(f)?;
        let mask = f.get("padded_attention_mask");
        let logits = model
            .forward(f.get("padded_input_ids"), Some(mask))
            .map_err(|e| e.to_string())?;
        let keep_tokens = ids(mask);
        let vocab = logits.dim(2).unwrap();
        let real = |i: usize| keep_tokens[i / vocab] == 1;
        let d = check_close(
            "padded_logits",
            &logits,
            f.get("padded_logits"),
            Some(&real),
        )?;
        Ok(format!("padded logits max diff {d:e}"))
    });
}

#[test]
fn greedy_generation_matches_reference_ids_and_step_logits() {
    for_each_fixture(|f| {
        let model = load(f)?;
        let prompt: Vec<u32> = ids(f.get("gen_prompt"))
            .into_iter()
            .map(|t| t as u32)
            .collect();
        let expected: Vec<u32> = ids(f.get("gen_output"))
            .into_iter()
            .map(|t| t as u32)
            .collect();
        let n = expected.len() - prompt.len();
        // The reference ran with min_new_tokens = n (eos suppressed), as this does.
        let config = GenerationConfig {
            min_new_tokens: n,
            output_logits: true,
            ..GenerationConfig::greedy(n)
        };
        let out = model
            .generate(&[prompt], &config)
            .map_err(|e| e.to_string())?;
        if out.sequences[0] != expected {
            return Err(format!(
                "greedy ids {:?}, reference {:?}",
                out.sequences[0], expected
            ));
        }
        let ours = Tensor::cat(&out.logits, 0).map_err(|e| e.to_string())?;
        let scores = f.get("gen_scores");
        // gen_scores went through transformers' logits processors: only the suppressed eos
        // entries differ from raw logits (-inf there), and those columns are left out.
        let eos: Vec<usize> = model
            .config()
            .eos_token_ids
            .iter()
            .map(|&e| e as usize)
            .collect();
        let vocab = scores.dim(1).unwrap();
        let flat: Vec<f32> = scores.flatten_all().unwrap().to_vec1().unwrap();
        if let Some(i) =
            (0..flat.len()).find(|&i| !flat[i].is_finite() && !eos.contains(&(i % vocab)))
        {
            return Err(format!("gen_scores has a non-eos non-finite entry at {i}"));
        }
        let d = check_close(
            "gen_scores",
            &ours,
            scores,
            Some(&|i| !eos.contains(&(i % vocab))),
        )?;
        Ok(format!(
            "{n} greedy tokens identical, step logits max diff {d:e}"
        ))
    });
}

#[test]
fn router_outputs_match_reference() {
    for_each_fixture(|f| {
        let layers: Vec<usize> = f
            .reference
            .keys()
            .filter_map(|k| k.strip_prefix("router_logits.")?.parse().ok())
            .collect();
        if layers.is_empty() {
            return Ok("no router outputs in the reference (dense model)".into());
        }
        let model = load(f)?;
        let options = ForwardOptions {
            output_router_logits: Some(true),
            ..ForwardOptions::default()
        };
        let out = model
            .forward_with(f.get("input_ids"), None, None, &options)
            .map_err(|e| e.to_string())?;
        let recorded: Vec<usize> = out.router_logits.iter().map(|r| r.layer).collect();
        let mut expected = layers.clone();
        expected.sort();
        if recorded != expected {
            return Err(format!(
                "router outputs for layers {recorded:?}, reference has {expected:?}"
            ));
        }
        let mut worst = 0f32;
        for record in &out.router_logits {
            let l = record.layer;
            worst = worst.max(check_close(
                &format!("router_logits.{l}"),
                &record.router.logits,
                f.get(&format!("router_logits.{l}")),
                None,
            )?);
            let ours = ids(&record.router.indices);
            let reference = ids(f.get(&format!("selected_experts.{l}")));
            if ours != reference {
                return Err(format!(
                    "selected_experts.{l}: {ours:?}, reference {reference:?}"
                ));
            }
        }
        Ok(format!(
            "router logits of layers {recorded:?} max diff {worst:e}, top-k ids identical"
        ))
    });
}

/// The suite is sensitive: one weight changed by a little is caught.
#[test]
fn a_single_wrong_weight_fails_parity() {
    for_each_fixture(|f| {
        let model = load(f)?;
        let params = model.weights().params().snapshot();
        let (name, _) = params
            .iter()
            .find(|(n, _)| {
                n.contains("layers.0.") && n.contains("down_proj")
                    || n.contains("layers.0.mlp.experts")
            })
            .ok_or("no layer-0 MLP weight")?;
        let tensors: std::collections::HashMap<String, Tensor> = params
            .iter()
            .map(|(n, t)| {
                if n == name {
                    // Scale one element by 1.5.
                    let flat: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                    let mut flat = flat;
                    flat[0] *= 1.5;
                    (
                        n.clone(),
                        Tensor::from_vec(flat, t.shape(), &Device::Cpu).unwrap(),
                    )
                } else {
                    (n.clone(), t.clone())
                }
            })
            .collect();
        let weights = patch_core::checkpoint::Weights::new(
            patch_core::checkpoint::TensorMap::new(tensors),
            DType::F32,
            &Device::Cpu,
        );
        let b = patch_core::Builder::new(weights).with_patches(PatchSet::empty());
        let config =
            (model.family().parse_config)(&f.config, "config").map_err(|e| e.to_string())?;
        let broken = CausalLM::build(&b, config, model.family()).map_err(|e| e.to_string())?;
        match plain_logits(f, &broken) {
            Err(e) => Ok(format!("changing one element of {name} is caught: {e}")),
            Ok(s) => Err(format!(
                "changing one element of {name} went unnoticed ({s})"
            )),
        }
    });
}

#[test]
fn explain_covers_every_site_and_every_built_module() {
    for_each_fixture(|f| {
        let model = load(f)?;
        let explained = model.explain();
        for site in model.family().sites {
            let r = explained
                .explain
                .site(site.name())
                .ok_or_else(|| format!("explain misses site {}", site.name()))?;
            if !matches!(r.outcome, patch_core::matching::Outcome::Original) {
                return Err(format!("{} is not original with no patches", site.name()));
            }
        }
        let report = explained.report.as_ref().ok_or("no build report")?;
        let layers = model.config().num_hidden_layers;
        for i in 0..layers {
            for child in [
                "",
                ".self_attn",
                ".mlp",
                ".input_layernorm",
                ".post_attention_layernorm",
            ] {
                let path = format!("model.layers.{i}{child}");
                report
                    .at(&path)
                    .ok_or_else(|| format!("nothing built at {path}"))?;
            }
        }
        let shown = explained.to_string();
        if !shown.contains(model.family().model_type) {
            return Err(format!("explain does not name the model type:\n{shown}"));
        }
        Ok(format!(
            "{} sites explained, {} modules built",
            model.family().sites.len(),
            report.sites().len()
        ))
    });
}

#[test]
fn saving_restores_the_original_files_exactly() {
    for_each_fixture(|f| {
        let model = load(f)?;
        let out = tempfile::tempdir().map_err(|e| e.to_string())?;
        model
            .save_pretrained(out.path(), &patch_core::checkpoint::SaveOptions::default())
            .map_err(|e| e.to_string())?;
        let n = common::same_checkpoint(&f.dir, out.path())?;
        // And the saved folder loads and computes the same logits.
        let again = AutoModelForCausalLM::from_pretrained(
            out.path(),
            &LoadOptions::default().with_patches(PatchSet::empty()),
        )
        .map_err(|e| e.to_string())?;
        plain_logits(f, &again)?;
        Ok(format!(
            "{n} tensors saved back bit for bit; the saved folder reproduces the logits"
        ))
    });
}

#[test]
fn sharded_saves_reload_and_save_back_to_the_original_files() {
    for_each_fixture(|f| {
        let model = load(f)?;
        let out = tempfile::tempdir().map_err(|e| e.to_string())?;
        let sharded = out.path().join("sharded");
        let options = patch_core::checkpoint::SaveOptions {
            max_shard_size: 64 * 1024,
            ..Default::default()
        };
        let report = model
            .save_pretrained(&sharded, &options)
            .map_err(|e| e.to_string())?;
        let shards = report
            .files
            .iter()
            .filter(|p| p.to_string_lossy().contains("-of-"))
            .count();
        if shards < 2 || !sharded.join("model.safetensors.index.json").exists() {
            return Err(format!("expected a sharded save, wrote {:?}", report.files));
        }
        let again = AutoModelForCausalLM::from_pretrained(
            &sharded,
            &LoadOptions::default().with_patches(PatchSet::empty()),
        )
        .map_err(|e| e.to_string())?;
        plain_logits(f, &again)?;
        let single = out.path().join("single");
        again
            .save_pretrained(&single, &Default::default())
            .map_err(|e| e.to_string())?;
        let n = common::same_checkpoint(&f.dir, &single)?;
        Ok(format!(
            "{shards} shards reload to the reference logits and save back {n} tensors bit for bit"
        ))
    });
}

/// One attention replacement for every family: delegates to the family's own attention.
struct AnyAttention(Box<dyn Attention>);
impl Build for AnyAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> patch_core::Result<Box<dyn Attention>> {
        let original = match args.config.model_type.as_str() {
            "qwen2_moe" => Qwen2MoeAttention::build(b, args)?,
            "qwen3" => Qwen3Attention::build(b, args)?,
            "qwen3_moe" => Qwen3MoeAttention::build(b, args)?,
            _ => LlamaAttention::build(b, args)?,
        };
        Ok(Box::new(Self(original)))
    }
}
impl Attention for AnyAttention {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        self.0.forward(x, ctx)
    }
}

#[test]
fn one_attention_pattern_patches_every_family() {
    let patches =
        PatchSet::from_mapping([(".*Attention", Replacement::of::<AnyAttention>())]).unwrap();
    for_each_fixture(|f| {
        let options = LoadOptions::default().with_patches(patches.clone());
        let model =
            AutoModelForCausalLM::from_pretrained(&f.dir, &options).map_err(|e| e.to_string())?;
        let layers = model.config().num_hidden_layers;
        let patched: Vec<&str> = model
            .report()
            .sites()
            .iter()
            .filter(|s| s.patch.is_some())
            .map(|s| s.site)
            .collect();
        if patched.len() != layers || !patched.iter().all(|s| s.ends_with("Attention")) {
            return Err(format!(
                "patched {patched:?}, expected one attention per layer"
            ));
        }
        plain_logits(f, &model)?;
        Ok(format!(
            "{} attention sites patched, logits unchanged",
            patched.len()
        ))
    });
}
