//! The patchwork command line: one subcommand per file, dispatched here. Output contracts are
//! documented on each subcommand and are stable: other tools parse them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod compare;
mod device;
mod dtype;
mod forward;
mod generate;
mod inspect;
mod model_args;
mod parallel;
mod progress;
mod resave;
mod rollouts;
mod routing_file;
mod routing_report;

/// Load, run, inspect, convert and save transformer checkpoints with patchwork.
#[derive(Debug, Parser)]
#[command(name = "patchwork", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log to stderr: -v what loads and runs, -vv more, -vvv everything (RUST_LOG, when set,
    /// chooses instead).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

/// Installs the stderr log when `-v` or `RUST_LOG` asks for one.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        _ => match verbose {
            0 => return,
            1 => EnvFilter::new("info"),
            2 => EnvFilter::new("debug"),
            _ => EnvFilter::new("trace"),
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .init();
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Model type, parameter count, dtype and the explain report of a checkpoint.
    Inspect(inspect::Args),
    /// Logits (and router outputs for MoE models) for a batch of token ids.
    Forward(forward::Args),
    /// Generate from a text prompt (streamed as text) or token ids; the last line of stdout is
    /// the whole id sequence.
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
    /// Pad rollouts (JSON Lines or an array, as vLLM and SGLang return them) into one training
    /// batch with their routing aligned: the safetensors `forward` reads.
    Rollouts(rollouts::Args),
    /// How far the trainer's own routing is from a rollout's: per layer, per token, and the
    /// labels' log-probabilities free and replayed, written as JSON; a summary on stdout.
    RoutingReport(routing_report::Args),
}

/// The error every subcommand returns.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    // Link the models crate so its link-time defaults (conversion mappings, patches) register.
    use patchwork_models as _;
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Forward(args) => forward::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Resave(args) => resave::run(&args),
        Command::Bench(args) => bench::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Rollouts(args) => rollouts::run(args),
        Command::RoutingReport(args) => routing_report::run(args),
    };
    match result {
        Ok(()) => {
            parallel::finish(None);
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Each cause once: one whose text its parent's message already contains (an
            // error that displays its source) is not repeated. Under --parallel every rank
            // says which it is, and the job ends on every rank.
            let rank = parallel::rank()
                .map(|(rank, world)| format!("rank {rank} of {world}: "))
                .unwrap_or_default();
            let mut shown = e.to_string();
            eprintln!("error: {rank}{shown}");
            let mut source = e.source();
            while let Some(s) = source {
                let text = s.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                shown = text;
                source = s.source();
            }
            parallel::finish(Some(1));
            ExitCode::FAILURE
        }
    }
}
