//! The upstream page's quickstart, in Rust: replace every `LlamaAttention` with a
//! `CustomLlamaAttention` that reports itself and delegates to the original, load a model,
//! check the patched type, explain, and generate text.
//!
//! `cargo run --release --example quickstart` (runs on the embedded `fixtures/llama-tiny`, a
//! Llama of about 0.1M parameters with random weights, made to check numerics against
//! transformers: its continuation is noise, and the program says so before printing it).
//! Checked when it runs (and under `cargo test`): every attention is the replacement, it ran
//! in every layer, the patched model's logits are the original's, the text has its tokens.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use patch_core::PatchSet;
use patchwork_models::llama::LlamaAttention;
use patchwork_models::prelude::*;
use patchwork_testing::{LOGITS, check_close};
use patchwork_text::{TextTokenizer, generate_text};

/// How many times a `CustomLlamaAttention` ran.
static CALLS: AtomicUsize = AtomicUsize::new(0);

// The replacement (upstream: `class CustomLlamaAttention(LlamaAttention)`, registered with
// `register_patch_mapping`). `#[patch(LlamaAttention)]` registers it at link time for that site
// and writes its `Build` around the original's constructor; the compiler checks it fills the
// site's slot. It only writes what it changes.
#[patch(LlamaAttention)]
pub struct CustomLlamaAttention(LlamaAttention);

impl Attention for CustomLlamaAttention {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        println!("Using custom attention! (layer {})", ctx.layer_idx);
        CALLS.fetch_add(1, Ordering::Relaxed);
        self.0.forward(x, ctx)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Load a model: every from_pretrained of this binary builds with the patch.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llama-tiny");
    let model = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default())?;
    println!(
        "llama-tiny is a Llama of {} parameters with random weights, made to check numerics \
         against transformers: the text it generates below is noise. For real text, run a real \
         model (a Hub id or a local folder):\n  cargo run --release --bin patchwork -- generate \
         Qwen/Qwen3-0.6B --prompt \"Once upon a time\"\n",
        model.num_parameters()
    );

    // type(model.model.layers[0].self_attn)
    let attn = model.get_submodule("model.layers.0.self_attn")?;
    println!("model.layers.0.self_attn: {}", attn.type_name());
    // Is my patch applied everywhere? Every module, by path.
    let mut patched = 0;
    for (path, module) in model.named_modules() {
        if module.is::<CustomLlamaAttention>() {
            println!("  patched: {path}");
            patched += 1;
        }
    }
    println!();
    let layers = model.config().num_hidden_layers;
    if !attn.is::<CustomLlamaAttention>() || patched != layers {
        return Err(format!("{patched} of {layers} attentions are CustomLlamaAttention").into());
    }

    // Is my patch applied, and why? Every site, the rule that chose its replacement, and
    // what was built at each path.
    println!("{}", model.explain());

    // It reports itself in every layer and delegates: the logits are the original model's.
    let ids = Tensor::new(&[[1u32, 66, 221, 47, 234]], &candle_core::Device::Cpu)?;
    let before = CALLS.load(Ordering::Relaxed);
    let logits = model.forward(&ids, None)?;
    if CALLS.load(Ordering::Relaxed) != before + layers {
        return Err("the custom attention did not run once per layer".into());
    }
    let options = LoadOptions::default().with_patches(PatchSet::empty());
    let original = AutoModelForCausalLM::from_pretrained(&dir, &options)?;
    let d = check_close(
        "patched vs original logits",
        &logits,
        &original.forward(&ids, None)?,
        LOGITS,
    )?;
    println!(
        "patched vs original logits: max |diff| {:e}\n",
        d.max_abs_diff
    );

    // tokenizer(prompt), model.generate and tokenizer.decode. The callback receives each
    // piece of text as it comes.
    let tokenizer = TextTokenizer::from_dir(&dir)?;
    let prompt = tokenizer.encode("Once upon a time", true)?;
    let config = GenerationConfig {
        ignore_eos: true,
        ..GenerationConfig::greedy(6)
    };
    let out = generate_text(&model, &tokenizer, &prompt, &config, |_piece| {})?;
    let sequence = &out.generation.sequences[0];
    println!(
        "text (noise: random weights): {:?}",
        format!("Once upon a time{}", out.text)
    );
    println!("ids: {sequence:?}");
    if sequence.len() != prompt.len() + 6 || out.text.is_empty() {
        return Err(format!("expected 6 new tokens and their text, got {sequence:?}").into());
    }
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
