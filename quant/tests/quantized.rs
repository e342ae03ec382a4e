//! Quantized projections and expert banks as path rules: every projection site (the output
//! head included) and every experts site in the topology's format, fallbacks where rows do not
//! fit, logits close to the float model's, composition with a user's patch, saving the
//! checkpoint the model was loaded from, and clear errors.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use patch_core::{Build, Builder, Module, PatchKey, PatchSet, Replacement};
use patchwork_models::decoder::{PassContext, Projection, ProjectionArgs};
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions, routing};
use patchwork_quant::{Format, QuantizedEmbedding, QuantizedExperts, QuantizedLinear, Topology};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The fixture folders with a reference (each a checkpoint of one family).
fn fixture_dirs() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("reference.safetensors").exists())
        .map(|d| (d.file_name().unwrap().to_string_lossy().into_owned(), d))
        .collect();
    out.sort();
    out
}

fn ids(vocab: usize) -> Tensor {
    let ids: Vec<u32> = (0..24).map(|i| ((i * 37 + 5) % vocab) as u32).collect();
    Tensor::from_vec(ids, (2, 12), &Device::Cpu).unwrap()
}

fn quantized(topology: &Topology) -> LoadOptions {
    LoadOptions::default().with_added_patches(topology.patches().unwrap())
}

/// `max |q - f| / max |f|` of the logits, the quantized model run under the float model's
/// routing (a quantized attention output that flips one token's top-k choice would otherwise
/// dominate the comparison).
fn relative_logits(float: &CausalLM, quantized: &CausalLM, vocab: usize) -> f32 {
    let options = ForwardOptions {
        output_router_logits: Some(true),
        ..ForwardOptions::default()
    };
    let f = float
        .forward_with(&ids(vocab), None, None, &options)
        .unwrap();
    let replay = ForwardOptions {
        forced_experts: routing::recorded_experts(&f.router_logits),
        ..ForwardOptions::default()
    };
    let q = quantized
        .forward_with(&ids(vocab), None, None, &replay)
        .unwrap();
    let (q, f) = (q.logits.unwrap(), f.logits.unwrap());
    // Both fail on any NaN or infinity, on either side.
    let d = patchwork_testing::max_abs_diff(&q, &f).unwrap_or_else(|e| panic!("{e}"));
    d / patchwork_testing::max_abs(&f).unwrap_or_else(|e| panic!("{e}"))
}

/// Every projection site and every experts site of `model` built as the quantized
/// replacement (or wraps it); returns (projections, experts) counted.
fn assert_all_quantized(model: &CausalLM, what: &str) -> (usize, usize) {
    let (mut projections, mut experts) = (0, 0);
    for site in model.report().sites() {
        match site.slot {
            "Projection" => {
                projections += 1;
                let float_by_rule = site.details.iter().any(|d| d.starts_with("float"));
                assert!(
                    site.built::<QuantizedLinear>() || float_by_rule,
                    "{what}: {} built {} ({:?})",
                    site.path,
                    site.module,
                    site.details
                );
            }
            "Experts" => {
                experts += 1;
                assert!(site.built::<QuantizedExperts>(), "{what}: {}", site.path);
            }
            "TokenEmbedding" => {
                let float_by_rule = site.details.iter().any(|d| d.starts_with("float"));
                assert!(
                    site.built::<QuantizedEmbedding>() || float_by_rule,
                    "{what}: {} built {}",
                    site.path,
                    site.module
                );
            }
            _ => {}
        }
    }
    (projections, experts)
}

#[test]
fn q8_0_models_stay_close_to_the_float_ones_on_every_fixture() {
    for (name, dir) in fixture_dirs() {
        let float = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default()).unwrap();
        let vocab = float.config().vocab_size;
        let model = AutoModelForCausalLM::from_pretrained(
            &dir,
            &quantized(&Topology::new(Some(Format::Q8_0))),
        )
        .unwrap();
        let (projections, experts) = assert_all_quantized(&model, &name);
        // q/k/v/o in every layer, and gate/up/down or a router in each.
        assert!(
            projections >= 5 * float.config().num_hidden_layers,
            "{name}"
        );
        assert_eq!(experts > 0, name.contains("moe"), "{name}");
        // The output head is a projection site like the others (a tied one quantizes the
        // embedding's table), and the embedding is quantized too, as llama.cpp's is.
        let head = model.report().at("lm_head").unwrap();
        assert!(head.built::<QuantizedLinear>(), "{name}: {}", head.module);
        let embedding = model.report().at("model.embed_tokens").unwrap();
        assert!(embedding.built::<QuantizedEmbedding>(), "{name}");
        assert_eq!(
            embedding.details,
            ["q8_0 (default) (rows dequantized as looked up)"],
            "{name}"
        );
        let r = relative_logits(&float, &model, vocab);
        eprintln!(
            "{name}: q8_0 logits within {:.2}% of max |f32 logits|",
            r * 100.0
        );
        // What these random 64-wide models measure: 1.5-4.1% with the prompt's activations
        // as floats (AVX2: many tokens multiply dequantized rows), 2.0-5.2% with every
        // activation rounded to 8 bits per block as llama.cpp does (AVX-512 VNNI: integer
        // tiles); a wrong block or scale moves logits by tens of percent.
        assert!(r < 0.06, "{name}: {r}");
        assert!(r > 0.0, "{name}: the weights were not quantized");
    }
}

#[test]
fn q4_k_models_stay_close_to_the_float_ones() {
    // Rows of 256 and 512 fit Q4_K's super-blocks: models of their own, seeded.
    for model_type in ["llama", "qwen3", "qwen3_moe"] {
        let config = serde_json::json!({
            "model_type": model_type,
            "hidden_size": 256,
            "intermediate_size": 512,
            "moe_intermediate_size": 256,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "vocab_size": 512,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": false,
        });
        let float = AutoModelForCausalLM::from_config(&config, &LoadOptions::default()).unwrap();
        let topology = Topology::new(Some(Format::Q4K));
        let model = AutoModelForCausalLM::from_config(&config, &quantized(&topology)).unwrap();
        assert_all_quantized(&model, model_type);
        for site in model
            .report()
            .sites()
            .iter()
            .filter(|s| s.slot == "Projection")
        {
            // Routers stay float (a built-in rule, as llama.cpp keeps them); every other
            // projection fits Q4_K here.
            let want = if site.path.ends_with("mlp.gate") {
                "float"
            } else {
                "q4_k (default)"
            };
            assert!(
                site.details[0].starts_with(want),
                "{}: {:?}",
                site.path,
                site.details
            );
        }
        let r = relative_logits(&float, &model, 512);
        eprintln!(
            "{model_type}: q4_k logits within {:.2}% of max |f32 logits|",
            r * 100.0
        );
        // Random Gaussian weights at 4.5 bits measure 17.8-19.3% here with our Q4_K kernels
        // (18.5-19.6% through candle's Q4_K product, the same weights); a wrong super-block
        // scale or offset gives well over 50%.
        assert!(r < 0.25 && r > 0.0, "{model_type}: {r}");
    }
}

/// llama-odd: hidden 320 (a multiple of 32, not of 256), intermediate 512, o_proj's input 144
/// (not even a multiple of 32). Q4_K falls back per tensor as llama.cpp's quantizer does, and
/// the report says where and why.
#[test]
fn a_topology_falls_back_per_tensor_and_says_why() {
    let dir = fixtures().join("llama-odd");
    let topology = Topology::new(Some(Format::Q4K))
        .with_rule_str("lm_head=q8_0")
        .unwrap()
        .with_rule_str(r"layers\.0\.=none")
        .unwrap();
    let model = AutoModelForCausalLM::from_pretrained(&dir, &quantized(&topology)).unwrap();
    let report = model.report();
    let format_at = |path: &str| -> (Option<Format>, String) {
        let site = report
            .all_at(path)
            .find(|s| s.slot == "Projection")
            .unwrap();
        let module = model.get_submodule(path).unwrap();
        let format = module
            .as_any()
            .downcast_ref::<QuantizedLinear>()
            .map(QuantizedLinear::format);
        (format, site.details.join("; "))
    };
    let cases = [
        (
            "model.layers.1.self_attn.q_proj",
            Some(Format::Q5_0),
            "q5_0 (default asked q4_k; q4_k needs rows in blocks of 256, these have 320)",
        ),
        (
            "model.layers.1.self_attn.o_proj",
            Some(Format::F16),
            "f16 (default asked q4_k; q4_k needs rows in blocks of 256, these have 144; q5_0 needs rows in blocks of 32, these have 144)",
        ),
        (
            "model.layers.1.mlp.up_proj",
            Some(Format::Q5_0),
            "q5_0 (default asked q4_k; q4_k needs rows in blocks of 256, these have 320)",
        ),
        (
            "model.layers.1.mlp.down_proj",
            Some(Format::Q4K),
            "q4_k (default)",
        ),
        (
            "model.layers.0.mlp.down_proj",
            None,
            "float (rule /layers\\.0\\./)",
        ),
        (
            "model.layers.0.self_attn.k_proj",
            None,
            "float (rule /layers\\.0\\./)",
        ),
        ("lm_head", Some(Format::Q8_0), "q8_0 (rule /lm_head/)"),
    ];
    for (path, format, why) in cases {
        assert_eq!(format_at(path), (format, why.to_string()), "{path}");
    }
    // The embedding's rows (320) fall back as q_proj's do.
    let embedding = report.at("model.embed_tokens").unwrap();
    assert_eq!(
        embedding.details.join("; "),
        "q5_0 (default asked q4_k; q4_k needs rows in blocks of 256, these have 320) (rows dequantized as looked up)"
    );
    let table = model
        .get_submodule_as::<QuantizedEmbedding>("model.embed_tokens")
        .unwrap();
    assert_eq!(table.format(), candle_core::quantized::GgmlDType::Q5_0);
    // Layer 0 kept float: its q/k/v are plain Linear again, so they are fused.
    let attn = model
        .get_submodule_as::<patchwork_models::llama::LlamaAttention>("model.layers.0.self_attn")
        .unwrap();
    assert!(attn.qkv.fused().is_some());
    let attn = model
        .get_submodule_as::<patchwork_models::llama::LlamaAttention>("model.layers.1.self_attn")
        .unwrap();
    // Layer 1's q/k/v, q5_0 all three, are stacked by their type, not fused as floats.
    assert!(attn.qkv.fused().is_none() && attn.qkv.is_fused());
    // The report folds nothing away: every path shows its format.
    let text = report.to_string();
    assert!(text.contains("f16 (default asked q4_k"), "{text}");
    // Close to the float model: q5_0/q4_k/f16 mixed, layer 0 float.
    let float = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default()).unwrap();
    let r = relative_logits(&float, &model, float.config().vocab_size);
    eprintln!(
        "llama-odd: q4_k topology logits within {:.2}% of max |f32 logits|",
        r * 100.0
    );
    assert!(r < 0.25 && r > 0.0, "{r}");
}

/// A quantized projection keeps no float weight, and saving writes the checkpoint it was
/// loaded from, bit for bit.
#[test]
fn quantized_models_keep_no_float_weights_and_save_the_original_checkpoint() {
    let dir = fixtures().join("llama-tiny");
    let model =
        AutoModelForCausalLM::from_pretrained(&dir, &quantized(&Topology::new(Some(Format::Q8_0))))
            .unwrap();
    let params = model.weights().params();
    for path in [
        "model.embed_tokens",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
    ] {
        let name = format!("{path}.weight");
        assert!(params.is_deferred(&name), "{name}");
        assert!(params.get(&name).is_none(), "{name} is kept");
        assert!(
            params.fetch(&name).unwrap().is_some(),
            "{name} cannot be read again"
        );
    }
    // q/k/v, quantized alike, are computed in one pass over their own (shared) blocks.
    let attn = model
        .get_submodule_as::<patchwork_models::llama::LlamaAttention>("model.layers.0.self_attn")
        .unwrap();
    assert!(attn.qkv.is_fused() && attn.qkv.fused().is_none());
    let float = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(model.num_parameters(), float.num_parameters());
    let out = tempfile::tempdir().unwrap();
    model
        .save_pretrained(out.path(), &Default::default())
        .unwrap();
    let original = std::fs::read(dir.join("model.safetensors")).unwrap();
    let saved = std::fs::read(out.path().join("model.safetensors")).unwrap();
    if original != saved {
        let keep = std::env::temp_dir().join("pw_saved.safetensors");
        std::fs::write(&keep, &saved).unwrap();
        panic!(
            "the saved weights differ from the checkpoint's (kept at {})",
            keep.display()
        );
    }
}

/// A user's patch at some projections wins over the topology's and wraps what it would have
/// built: a quantized projection (the QLoRA composition).
#[test]
fn a_users_path_rule_wraps_the_quantized_projection() {
    struct Doubled(Box<dyn Projection>);
    impl Build for Doubled {
        type Slot = dyn Projection;
        fn build(b: &Builder, args: ProjectionArgs<'_>) -> patch_core::Result<Box<dyn Projection>> {
            Ok(Box::new(Doubled(b.build_original(args)?)))
        }
        fn wraps(&self) -> Option<&dyn Module> {
            Some(&*self.0)
        }
    }
    impl Projection for Doubled {
        fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
            self.0.forward(x, pass)? * 2.0
        }
        fn in_features(&self) -> usize {
            self.0.in_features()
        }
        fn out_features(&self) -> usize {
            self.0.out_features()
        }
    }
    let dir = fixtures().join("llama-tiny");
    let user = PatchSet::from_mapping([(
        PatchKey::new("Linear").with_path(r"self_attn\.v_proj$"),
        Replacement::of::<Doubled>(),
    )])
    .unwrap();
    let options = LoadOptions::default()
        .with_patches(user)
        .with_added_patches(Topology::new(Some(Format::Q8_0)).patches().unwrap());
    let model = AutoModelForCausalLM::from_pretrained(&dir, &options).unwrap();
    let v = model
        .report()
        .at("model.layers.1.self_attn.v_proj")
        .unwrap();
    assert!(v.module.ends_with("Doubled"), "{}", v.module);
    assert_eq!(v.wraps, [std::any::type_name::<QuantizedLinear>()]);
    let q = model
        .report()
        .at("model.layers.1.self_attn.q_proj")
        .unwrap();
    assert!(q.built::<QuantizedLinear>() && q.wraps.is_empty());
    let report = model.report().to_string();
    assert!(
        report.contains(
            r#"Doubled by exact "Linear" at /self_attn\.v_proj$/ > QuantizedLinear; q8_0 (default)"#
        ),
        "{report}"
    );
}

#[test]
fn quantizing_trainable_weights_is_an_error_naming_the_path() {
    let dir = fixtures().join("llama-tiny");
    let options = quantized(&Topology::new(Some(Format::Q8_0))).trainable();
    let e = AutoModelForCausalLM::from_pretrained(&dir, &options)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("quantized weights are for inference"), "{e}");
    // The first quantized site built names itself.
    assert!(e.contains("q8_0 at \"model.embed_tokens\""), "{e}");
    // Leaving every projection float by rule: the trainable load works.
    let float = Topology::new(Some(Format::Q8_0))
        .with_rule_str(".=none")
        .unwrap();
    let options = quantized(&float).trainable();
    AutoModelForCausalLM::from_pretrained(&dir, &options).unwrap();
}
