//! `patchwork resave SRC DST [--revision R] [--max-shard-size BYTES]`: load a checkpoint (a
//! folder or a Hub id) with every conversion its model's registered mapping has, and save it
//! back through the reverse ops.

use std::path::PathBuf;

use clap::Args;
use patch_checkpoint::{SaveOptions, conversion_registry, resave};
use patchwork_hub::HubOptions;

/// Arguments of `patchwork resave`.
#[derive(Debug, Args)]
pub struct ResaveArgs {
    /// The checkpoint to read: a folder (config.json and safetensors, single or sharded), or a
    /// Hub id.
    pub src: PathBuf,
    /// The folder to write (created if needed; its old weight files are replaced).
    pub dst: PathBuf,
    /// Branch, tag or commit hash of a Hub id.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Largest shard in bytes; above it the weights are sharded with an index file.
    #[arg(long, default_value_t = SaveOptions::default().max_shard_size)]
    pub max_shard_size: u64,
}

/// Runs `patchwork resave` and prints what was done.
pub fn run(args: &ResaveArgs) -> Result<(), Box<dyn std::error::Error>> {
    let src = patchwork_hub::resolve_model(
        &args.src,
        &HubOptions::default().with_revision(&args.revision),
    )?;
    let options = SaveOptions {
        max_shard_size: args.max_shard_size,
        progress: crate::progress::bar(),
        ..SaveOptions::default()
    };
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
    Ok(())
}
