//! The upstream page's quickstart, in Rust: replace every `LlamaAttention` with a
//! `CustomLlamaAttention` that reports itself and delegates to the original, load a model,
//! check the patched type, explain, and generate text.
//!
//! `cargo run --release --example quickstart` (runs on the embedded `fixtures/llama-tiny`).

use std::path::Path;

use patchwork_models::llama::LlamaAttention;
use patchwork_models::prelude::*;
use patchwork_text::{TextTokenizer, generate_text};

// The replacement (upstream: `class CustomLlamaAttention(LlamaAttention)`, registered with
// `register_patch_mapping`). `#[patch(LlamaAttention)]` registers it at link time for that site
// and writes its `Build` around the original's constructor; the compiler checks it fills the
// site's slot. It only writes what it changes.
#[patch(LlamaAttention)]
pub struct CustomLlamaAttention(LlamaAttention);

impl Attention for CustomLlamaAttention {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        println!("Using custom attention! (layer {})", ctx.layer_idx);
        self.0.forward(x, ctx)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Load a model: every from_pretrained of this binary builds with the patch.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llama-tiny");
    let model = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default())?;

    // type(model.model.layers[0].self_attn)
    let attn = model.get_submodule("model.layers.0.self_attn")?;
    println!("model.layers.0.self_attn: {}", attn.type_name());
    assert!(attn.is::<CustomLlamaAttention>());
    // Is my patch applied everywhere? Every module, by path.
    for (path, module) in model.named_modules() {
        if module.is::<CustomLlamaAttention>() {
            println!("  patched: {path}");
        }
    }
    println!();

    // Is my patch applied, and why? Every site, the rule that chose its replacement, and
    // what was built at each path.
    println!("{}", model.explain());

    // tokenizer(prompt), model.generate and tokenizer.decode (the tiny model's weights are
    // random: its text is too). The callback receives each piece of text as it comes.
    let tokenizer = TextTokenizer::from_dir(&dir)?;
    let prompt = tokenizer.encode("Once upon a time", true)?;
    let config = GenerationConfig {
        ignore_eos: true,
        ..GenerationConfig::greedy(6)
    };
    let out = generate_text(&model, &tokenizer, &prompt, &config, |_piece| {})?;
    println!("text: {:?}", format!("Once upon a time{}", out.text));
    println!("ids: {:?}", out.generation.sequences[0]);
    Ok(())
}
