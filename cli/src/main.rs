//! The patchwork command line: one subcommand per file, dispatched here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod resave;

/// Load, convert and save transformer checkpoints with patchwork.
#[derive(Debug, Parser)]
#[command(name = "patchwork", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load a checkpoint with all its conversions and save it back (a round trip of the
    /// checkpoint engine: the saved tensors equal the originals bit for bit).
    Resave(resave::ResaveArgs),
}

fn main() -> ExitCode {
    // Link the models crate so its link-time defaults (conversion mappings, patches) register.
    use patchwork_models as _;
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Resave(args) => resave::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
