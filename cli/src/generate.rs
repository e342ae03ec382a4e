//! `patchwork generate MODEL (--prompt TEXT [--chat [--system TEXT]] | --prompt-ids 5,6,7)
//! --max-new-tokens N [--ignore-eos] [--temperature T] [--top-k K] [--top-p P] [--seed S]
//! [--dtype f32|bf16|f16|auto] [--device D] [--max-positions N]`.
//!
//! Greedy unless a temperature is given (`--top-k`, `--top-p` and `--seed` need one). With a
//! tokenizer in the checkpoint folder (`tokenizer.json`), `--prompt` is encoded as the Python
//! library encodes it (`--chat` renders it as a user message through the chat template of
//! `tokenizer_config.json` first), and the new text is streamed to stdout as it comes, then a
//! newline. The last line of stdout is always the whole sequence, prompt then new ids,
//! comma-separated; timings go to stderr.

use std::io::Write;
use std::time::Instant;

use patchwork_models::{GenerationConfig, Sampling};
use patchwork_text::{ChatMessage, TextTokenizer, generate_text};

use crate::CliResult;
use crate::model_args::ModelArgs;

/// Arguments of `generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (needs the checkpoint's tokenizer.json).
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    prompt: Option<String>,
    /// Render the prompt as a user message with the tokenizer's chat template.
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// A system message before the prompt (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    prompt_ids: Option<Vec<u32>>,
    /// Tokens to generate at most.
    #[arg(long)]
    max_new_tokens: usize,
    /// Do not stop at the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Sample with this temperature instead of decoding greedily.
    #[arg(long)]
    temperature: Option<f64>,
    /// Sample among the K most likely tokens only.
    #[arg(long, requires = "temperature")]
    top_k: Option<usize>,
    /// Sample among the most likely tokens whose probability reaches P.
    #[arg(long, requires = "temperature")]
    top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, requires = "temperature")]
    seed: Option<u64>,
}

/// Runs `generate`.
pub fn run(args: Args) -> CliResult {
    let start = Instant::now();
    let location = args.model.location()?;
    let tokenizer = TextTokenizer::for_model(&location)?;
    let model = args.model.load(|o| o)?;
    let loaded = start.elapsed();
    let prompt_ids = match (&args.prompt, &args.prompt_ids, &tokenizer) {
        (_, Some(ids), _) => ids.clone(),
        (Some(text), None, Some(tok)) if args.chat => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(ChatMessage::system(system.clone()));
            }
            messages.push(ChatMessage::user(text.clone()));
            tok.encode_chat(&messages, true)?
        }
        (Some(text), None, Some(tok)) => tok.encode(text, true)?,
        (Some(_), None, None) => {
            return Err(format!(
                "--prompt: {} has no tokenizer.json; give --prompt-ids instead",
                location.display()
            )
            .into());
        }
        (None, None, _) => return Err("give --prompt or --prompt-ids".into()),
    };
    let sampling = match args.temperature {
        None => Sampling::Greedy,
        Some(temperature) => Sampling::Sample {
            temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed.unwrap_or(0),
        },
    };
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling,
        ignore_eos: args.ignore_eos,
        ..GenerationConfig::default()
    };
    let prompt_len = prompt_ids.len();
    let start = Instant::now();
    let sequence = match &tokenizer {
        Some(tok) if crate::parallel::is_root() => {
            let mut stdout = std::io::stdout().lock();
            let out = generate_text(&model, tok, &prompt_ids, &config, |piece| {
                // A closed stdout ends the stream, not the generation's bookkeeping.
                let _ = stdout
                    .write_all(piece.as_bytes())
                    .and_then(|()| stdout.flush());
            })?;
            writeln!(stdout)?;
            out.generation.sequences[0].clone()
        }
        Some(tok) => generate_text(&model, tok, &prompt_ids, &config, |_| {})?
            .generation
            .sequences[0]
            .clone(),
        None => model.generate(&[prompt_ids], &config)?.sequences[0].clone(),
    };
    let elapsed = start.elapsed();
    let new = sequence.len().saturating_sub(prompt_len);
    if crate::parallel::is_root() {
        eprintln!(
            "loaded in {:.2}s; {new} new tokens in {:.2}s ({:.1} tokens/s)",
            loaded.as_secs_f64(),
            elapsed.as_secs_f64(),
            new as f64 / elapsed.as_secs_f64().max(1e-9)
        );
    }
    let line: Vec<String> = sequence.iter().map(u32::to_string).collect();
    crate::parallel::say!("{}", line.join(","));
    Ok(())
}
