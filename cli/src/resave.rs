//! `patchwork resave SRC DST [--revision R] [--max-shard-size BYTES]`: load a checkpoint (a
//! folder or a Hub id) with every conversion its model's registered mapping has, and save it
//! back through the reverse ops; or turn a GGUF file into a transformers folder (safetensors
//! of the dequantized weights, config.json, tokenizer.json and tokenizer_config.json with the
//! chat template). With `--adapter [NAME=]DIR` (repeatable), each LoRA adapter is read against
//! the model (strictly: every tensor must land on a projection) and written back in PEFT's
//! layout to `DST/NAME`.

use std::path::PathBuf;

use clap::Args;
use patch_checkpoint::{SaveOptions, conversion_registry, resave};
use patchwork_hub::HubOptions;
use patchwork_lora::{LoraAdapters, LoraOptions};
use patchwork_models::{AutoModelForCausalLM, LoadOptions};
use patchwork_text::TextTokenizer;

/// Arguments of `patchwork resave`.
#[derive(Debug, Args)]
pub struct ResaveArgs {
    /// The checkpoint to read: a folder (config.json and safetensors, single or sharded), a
    /// GGUF file (or a folder holding one and no config.json), or a Hub id.
    pub src: PathBuf,
    /// The GGUF file to read from the SRC folder.
    #[arg(long, value_name = "NAME")]
    pub gguf_file: Option<String>,
    /// The folder to write (created if needed; its old weight files are replaced).
    pub dst: PathBuf,
    /// Branch, tag or commit hash of a Hub id.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Largest shard in bytes; above it the weights are sharded with an index file.
    #[arg(long, default_value_t = SaveOptions::default().max_shard_size)]
    pub max_shard_size: u64,
    /// A LoRA adapter folder (PEFT's layout) to read against the model and write back to
    /// DST/NAME, repeatable (named by its folder, or NAME).
    #[arg(long = "adapter", value_name = "[NAME=]DIR")]
    pub adapters: Vec<String>,
}

/// Runs `patchwork resave` and prints what was done.
pub fn run(args: &ResaveArgs) -> Result<(), Box<dyn std::error::Error>> {
    let load = LoadOptions {
        hub: HubOptions::default().with_revision(&args.revision),
        gguf_file: args.gguf_file.clone(),
        ..LoadOptions::default()
    };
    let src = patchwork_models::model_location(&args.src, &load)?;
    let options = SaveOptions {
        max_shard_size: args.max_shard_size,
        progress: crate::progress::bar(),
        ..SaveOptions::default()
    };
    if src.is_file() {
        from_gguf(&src, &args.dst, &load, &options)?;
        return resave_adapters(args, &src, &load);
    }
    let report = resave(&src, &args.dst, &conversion_registry(), &options)?;
    match &report.mapping {
        Some(key) => println!("conversion mapping: {key}"),
        None => println!("conversion mapping: none registered for this config"),
    }
    print!("{}", report.load);
    println!(
        "wrote {} tensors ({:.1} MB) to {}:",
        report.save.tensors,
        report.save.total_size as f64 / 1e6,
        args.dst.display()
    );
    for f in &report.save.files {
        println!("  {}", f.display());
    }
    resave_adapters(args, &src, &load)
}

/// The `--adapter`s read against the model at `src` and written back to `DST/NAME`.
fn resave_adapters(
    args: &ResaveArgs,
    src: &std::path::Path,
    load: &LoadOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    if args.adapters.is_empty() {
        return Ok(());
    }
    let named = args
        .adapters
        .iter()
        .map(|a| crate::model_args::adapter_arg(a));
    let adapters = LoraAdapters::from_named(named, &LoraOptions::default())?;
    adapters.load_model(src, load)?;
    for name in adapters.names() {
        let out = args.dst.join(&name);
        adapters.save_pretrained(&name, &out)?;
        println!(
            "adapter {name}: {} paths, written to {}",
            adapters.paths(&name)?.len(),
            out.display()
        );
    }
    Ok(())
}

/// A GGUF file to a transformers folder: the model loaded (its quantized blocks packed), saved
/// with every tensor dequantized in the checkpoint layout its family's transformers class reads,
/// and the tokenizer its metadata describes.
fn from_gguf(
    src: &std::path::Path,
    dst: &std::path::Path,
    load: &LoadOptions,
    options: &SaveOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    let model = AutoModelForCausalLM::from_pretrained(src, load)?;
    let report = model.save_pretrained(dst, options)?;
    let tokenizer = TextTokenizer::from_gguf(src)?;
    tokenizer.save(dst)?;
    println!("GGUF file: {}", src.display());
    println!(
        "wrote {} tensors ({:.1} MB), config.json, tokenizer.json and tokenizer_config.json to {}:",
        report.tensors,
        report.total_size as f64 / 1e6,
        dst.display()
    );
    for f in &report.files {
        println!("  {}", f.display());
    }
    Ok(())
}
