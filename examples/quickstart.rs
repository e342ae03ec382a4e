//! The upstream page's quickstart, in Rust: replace every `LlamaAttention` with a
//! `CustomLlamaAttention` that reports itself and delegates to the original, load a model,
//! check the patched type, explain, and generate.
//!
//! `cargo run --release --example quickstart` (runs on the embedded `fixtures/llama-tiny`).

use patch_core::ModuleExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use patch_core::{Build, Builder, Replacement, register_patch_mapping};
use patchwork_models::decoder::{Attention, AttentionArgs, LayerContext};
use patchwork_models::llama::{LlamaAttention, LlamaDecoderLayer};
use patchwork_models::{AutoModelForCausalLM, GenerationConfig, LoadOptions};

/// Set once the first custom attention has run: it announces itself once, not per token.
static ANNOUNCED: AtomicBool = AtomicBool::new(false);

/// The replacement: fills the same slot as `LlamaAttention` (the compiler checks it), holds
/// the original built with the same weights and arguments, and delegates to it (upstream
/// subclasses `LlamaAttention` and calls `super().forward`).
pub struct CustomLlamaAttention {
    original: LlamaAttention,
}

impl Build for CustomLlamaAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> patch_core::Result<Box<dyn Attention>> {
        Ok(Box::new(Self {
            original: LlamaAttention::new(b, args)?,
        }))
    }
}

impl Attention for CustomLlamaAttention {
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<Tensor> {
        if !ANNOUNCED.swap(true, Ordering::Relaxed) {
            println!(
                "Using custom attention! (layer {}, reported once)",
                ctx.layer_idx
            );
        }
        self.original.forward(hidden_states, ctx)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Register the patch globally: every from_pretrained / from_config from now on uses it.
    register_patch_mapping(
        [("LlamaAttention", Replacement::of::<CustomLlamaAttention>())],
        false,
    )?;

    // Load a model: the patch is applied while it is built.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llama-tiny");
    let model = AutoModelForCausalLM::from_pretrained(&dir, &LoadOptions::default())?;

    // type(model.model.layers[0].self_attn)
    // Layers are stored as slot trait objects: downcast to the family's layer to reach its
    // fields, as upstream code reaches `.self_attn` on a LlamaDecoderLayer.
    let layer0 = model.model.layers[0]
        .downcast_ref::<LlamaDecoderLayer>()
        .ok_or("layer 0 is not a LlamaDecoderLayer")?;
    println!(
        "model.layers[0].self_attn: {}",
        layer0.self_attn.type_name()
    );
    assert!(layer0.self_attn.is::<CustomLlamaAttention>());
    println!();

    // Is my patch applied, and why? Every site, the rule that chose its replacement, and
    // what was built at each path.
    println!("{}", model.explain());

    let prompt = vec![66, 221, 47, 234, 117, 102, 13, 226];
    let config = GenerationConfig {
        ignore_eos: true,
        ..GenerationConfig::greedy(16)
    };
    let out = model.generate_with(&[prompt], &config, |_, token| print!("{token} "))?;
    println!();
    println!("sequence: {:?}", out.sequences[0]);
    Ok(())
}
