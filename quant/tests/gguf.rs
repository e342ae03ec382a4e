//! GGUF files as models, against what transformers computed on them (`fixtures/gguf/`, made
//! by `fixtures/oracle/make_gguf.py` with llama.cpp's converter and quantizer): logits of the
//! dequantized model, the packed model within the activations' rounding, greedy ids, every
//! quantized tensor kept packed, and the dequantized weights bit for bit as transformers'.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use patchwork_models::{
    AutoModelForCausalLM, CausalLM, ForwardOptions, GenerationConfig, LoadOptions, routing,
};
// The packed GGUF modules register at link time: this crate must be linked.
use patchwork_quant as _;

fn gguf_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gguf")
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(gguf_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every GGUF fixture: (file name, its manifest entry).
fn files() -> Vec<(String, serde_json::Value)> {
    let m = manifest();
    let mut out: Vec<(String, serde_json::Value)> = m["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn load(file: &str, packed: bool) -> CausalLM {
    let options = LoadOptions::default().with_packed(packed);
    AutoModelForCausalLM::from_pretrained(gguf_dir().join(file), &options)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn tensors(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `max |a - b|` and `max |b|`, failing on any non-finite value on either side.
fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let d = patchwork_testing::max_abs_diff(a, b).unwrap_or_else(|e| panic!("{e}"));
    let s = patchwork_testing::max_abs(b).unwrap_or_else(|e| panic!("{e}"));
    (d, s)
}

/// What the file's logits must equal and how (the reference of the model it was converted
/// from where transformers' own GGUF loading differs or fails): `(reference, why)`.
fn reference(
    file: &str,
    entry: &serde_json::Value,
) -> Option<(HashMap<String, Tensor>, &'static str)> {
    let own = gguf_dir().join(file.replace(".gguf", ".reference.safetensors"));
    let rope_freqs = entry["types"].get("rope_freqs.weight").is_some();
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(entry["source"].as_str().unwrap())
        .join("reference.safetensors");
    let float32 = entry["type"] == "F32";
    // GGUF has no sliding window for these architectures (llama.cpp's converter drops Qwen3's):
    // such a file is another model than its checkpoint.
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(source.with_file_name("config.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let windowed = config["use_sliding_window"] == true;
    if own.exists() && !rope_freqs {
        Some((tensors(own), "transformers on this GGUF file"))
    } else if float32 && source.exists() && !windowed {
        // transformers' GGUF loader ignores llama.cpp's rope_freqs, or cannot load the file:
        // an f32 file is exactly the checkpoint it came from.
        Some((
            tensors(source),
            "transformers on the checkpoint it was converted from",
        ))
    } else {
        None
    }
}

/// The dequantized model computes transformers' logits (1e-4 of their scale, the parity
/// suite's tolerance), and greedy generation gives its ids.
#[test]
fn dequantized_models_compute_transformers_logits_and_ids() {
    let mut checked = 0;
    for (file, entry) in files() {
        let Some((reference, why)) = reference(&file, &entry) else {
            continue;
        };
        let model = load(&file, false);
        let logits = model.forward(&reference["input_ids"], None).unwrap();
        let (d, s) = diff(&logits, &reference["logits"]);
        eprintln!("{file}: logits within {d:.2e} of {why} (scale {s:.2})");
        assert!(d <= 1e-4 * s.max(1.0), "{file}: {d} vs {why}");
        let prompt: Vec<u32> = reference["gen_prompt"]
            .flatten_all()
            .unwrap()
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<u32> = reference["gen_output"]
            .flatten_all()
            .unwrap()
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let n = want.len() - prompt.len();
        let config = GenerationConfig {
            min_new_tokens: n,
            ignore_eos: true,
            ..GenerationConfig::greedy(n)
        };
        let out = model.generate(&[prompt], &config).unwrap();
        assert_eq!(out.sequences[0], want, "{file}: greedy ids");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} files had a reference");
}

/// Packed, every quantized tensor stays in its blocks, and the logits differ from the
/// dequantized model's only by the activations' 8-bit rounding the block kernels do.
#[test]
fn packed_models_keep_blocks_and_stay_within_the_activation_rounding() {
    for (file, entry) in files() {
        let packed = load(&file, true);
        let float = load(&file, false);
        let quantized = entry["type"] != "F32";
        for site in packed.report().sites() {
            if site.slot != "Projection" || !quantized {
                continue;
            }
            // Routers and the shared expert's gate are stored float by llama.cpp's quantizer.
            let stored_float = site.details.is_empty();
            let stored =
                site.path.ends_with("mlp.gate") || site.path.ends_with("shared_expert_gate");
            assert!(
                !stored_float || stored,
                "{file}: {} built {} ({:?})",
                site.path,
                site.module,
                site.details
            );
        }
        let ids = Tensor::from_vec(
            (0..24u32).map(|i| (i * 37 + 5) % 200).collect::<Vec<_>>(),
            (2, 12),
            &Device::Cpu,
        )
        .unwrap();
        // MoE models run the packed model under the float one's routing: a token whose top-k
        // flips would otherwise dominate the comparison.
        let recorded = ForwardOptions {
            output_router_logits: Some(true),
            ..ForwardOptions::default()
        };
        let f = float.forward_with(&ids, None, None, &recorded).unwrap();
        let replay = ForwardOptions {
            forced_experts: routing::recorded_experts(&f.router_logits),
            ..ForwardOptions::default()
        };
        let p = packed.forward_with(&ids, None, None, &replay).unwrap();
        let (d, s) = diff(p.logits.as_ref().unwrap(), f.logits.as_ref().unwrap());
        eprintln!(
            "{file}: packed within {:.2}% of the dequantized model",
            100.0 * d / s
        );
        // 8-bit activations per 32-weight block (the kernels' own for Q8_0, Q6_K, Q5_0, Q5_1,
        // Q4_K, Q4_0 and Q4_1; candle's for Q5_K, Q3_K and Q2_K; f16 weights compute in f16): a
        // few percent on these random models, and a wrong scale, block or row order moves
        // logits by tens of percent.
        assert!(d <= 0.06 * s, "{file}: {d} of {s}");
    }
}

/// The weights the dequantized model holds are transformers' dequantization, bit for bit
/// (what `resave` writes), q/k rows put back in transformers' order.
#[test]
fn dequantized_weights_are_transformers_bit_for_bit() {
    let mut compared = 0;
    for (file, _) in files() {
        let path = gguf_dir().join(file.replace(".gguf", ".dequantized.safetensors"));
        if !path.exists() {
            continue;
        }
        let want = tensors(path);
        let model = load(&file, true);
        let params = model.weights().params();
        for (name, _) in params.entries() {
            let Some(w) = want.get(&name) else { continue };
            let ours = params.fetch(&name).unwrap().unwrap();
            let a: Vec<u32> = ours
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let b: Vec<u32> = w
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            assert!(
                a == b,
                "{file}: {name} differs from transformers' dequantization"
            );
            compared += 1;
        }
    }
    assert!(compared >= 100, "only {compared} tensors compared");
}
