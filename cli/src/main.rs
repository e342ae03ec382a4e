//! The patchwork command line: one subcommand per file, dispatched here. Output contracts are
//! documented on each subcommand and are stable: other tools parse them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod compare;
mod dtype;
mod forward;
mod generate;
mod inspect;
mod model_args;
mod resave;

/// Load, run, inspect, convert and save transformer checkpoints with patchwork.
#[derive(Debug, Parser)]
#[command(name = "patchwork", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Model type, parameter count, dtype and the explain report of a checkpoint.
    Inspect(inspect::Args),
    /// Logits (and router outputs for MoE models) for a batch of token ids.
    Forward(forward::Args),
    /// Generate token ids from a prompt; the last line of stdout is the whole sequence.
    Generate(generate::Args),
    /// Load a checkpoint with all its conversions and save it back (a round trip of the
    /// checkpoint engine: the saved tensors equal the originals bit for bit).
    Resave(resave::ResaveArgs),
    /// Load time, prefill and decode tokens/s and peak memory; the last line of stdout is
    /// `prefill_tok_s=<x> decode_tok_s=<y>`.
    Bench(bench::Args),
    /// Run a patch set and the original on the same tokens with every site recorded: the
    /// largest difference per module path, and the first divergence (exit 1 when there is one).
    Compare(compare::Args),
}

/// The error every subcommand returns.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    // Link the models crate so its link-time defaults (conversion mappings, patches) register.
    use patchwork_models as _;
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Forward(args) => forward::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Resave(args) => resave::run(&args),
        Command::Bench(args) => bench::run(args),
        Command::Compare(args) => compare::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
