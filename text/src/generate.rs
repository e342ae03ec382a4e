//! Generation from text: the new tokens decoded as they come.

use patchwork_models::{CausalLM, Generation, GenerationConfig};

use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// What [`generate_text`] returns.
#[derive(Clone, Debug)]
pub struct TextGeneration {
    /// The prompt's ids.
    pub prompt_ids: Vec<u32>,
    /// The generated ids.
    pub new_ids: Vec<u32>,
    /// The generated text (special tokens left out): what `on_text` received, joined.
    pub text: String,
    /// The whole generation (sequences, routed experts, logits).
    pub generation: Generation,
}

/// Generates from `prompt_ids` (from [`TextTokenizer::encode`] or
/// [`TextTokenizer::encode_chat`]) with `config`, calling `on_text` with each piece of new
/// text as soon as it is whole. Generation stops at the model's stop ids (its generation
/// config, else its config), or, when the model names none, at the tokenizer's `eos_token`.
pub fn generate_text(
    model: &CausalLM,
    tokenizer: &TextTokenizer,
    prompt_ids: &[u32],
    config: &GenerationConfig,
    mut on_text: impl FnMut(&str),
) -> Result<TextGeneration> {
    let mut config = config.clone();
    if config.eos_token_ids.is_none()
        && model.eos_token_ids().is_empty()
        && let Some(eos) = tokenizer.eos_token_id()
    {
        config.eos_token_ids = Some(vec![eos]);
    }
    let mut stream = tokenizer.stream();
    let mut text = String::new();
    let mut failure: Option<Error> = None;
    let generation = model.generate_with(&[prompt_ids.to_vec()], &config, |_, token| {
        if failure.is_some() {
            return;
        }
        match stream.step(token) {
            Ok(Some(piece)) => {
                on_text(&piece);
                text.push_str(&piece);
            }
            Ok(None) => {}
            Err(e) => failure = Some(e),
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(TextGeneration {
        prompt_ids: prompt_ids.to_vec(),
        new_ids: generation.new_tokens[0].clone(),
        text,
        generation,
    })
}
