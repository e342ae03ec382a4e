//! `CausalLM::generate`: prompts left-padded into one batch, a KV cache allocated once, the
//! prompt run once, then one token per row per step until every row ends.

use candle_core::Tensor;

use super::config::{Generation, GenerationConfig};
use super::routes::RouteRecorder;
use super::sampler::Sampler;
use crate::causal_lm::{CausalLM, ForwardOptions, ForwardOutput, LogitsMode};
use crate::{Error, Result};

impl CausalLM {
    /// Generates a continuation of each prompt (see [`GenerationConfig`]).
    ///
    /// ```
    /// use patchwork_models::{AutoModelForCausalLM, GenerationConfig, LoadOptions};
    /// # let config = serde_json::json!({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
    /// #     "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2});
    /// let model = AutoModelForCausalLM::from_config(&config, &LoadOptions::default())?;
    /// let out = model.generate(&[vec![5, 6, 7], vec![9]], &GenerationConfig::greedy(4))?;
    /// assert_eq!(&out.sequences[1][..1], &[9]);
    /// # Ok::<(), patchwork_models::Error>(())
    /// ```
    pub fn generate(&self, prompts: &[Vec<u32>], config: &GenerationConfig) -> Result<Generation> {
        self.generate_with(prompts, config, |_, _| {})
    }

    /// Like [`CausalLM::generate`], calling `on_token(row, token)` for each token as soon as
    /// it is chosen (streaming). Prompts of different lengths are left-padded and masked.
    pub fn generate_with(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Generation> {
        let _span = tracing::info_span!(
            "generate",
            rows = prompts.len(),
            max_new_tokens = config.max_new_tokens
        )
        .entered();
        config.validate()?;
        self.check_prompts(prompts)?;
        let (eos, pad) = self.stop_and_pad_ids(config)?;
        let batch = LeftPadded::new(prompts, pad);
        self.check_positions(
            &format!(
                "a prompt of {} tokens and max_new_tokens = {}",
                batch.width, config.max_new_tokens
            ),
            batch.width.checked_add(config.max_new_tokens),
        )?;
        let mut run = Decoding {
            model: self,
            config,
            eos,
            pad,
            new_tokens: vec![Vec::new(); prompts.len()],
            finished: vec![false; prompts.len()],
            step_logits: Vec::new(),
            routes: RouteRecorder::new(prompts.len(), config.output_routed_experts),
            sampler: Sampler::new(&config.sampling),
        };
        if config.max_new_tokens > 0 {
            run.decode(batch, &mut on_token)?;
        }
        run.finish(prompts)
    }

    /// Every prompt non-empty, every token below the vocabulary size.
    fn check_prompts(&self, prompts: &[Vec<u32>]) -> Result<()> {
        if prompts.is_empty() {
            return Err(Error::input("prompts", "no prompt given"));
        }
        let vocab_size = self.config().vocab_size;
        for (row, prompt) in prompts.iter().enumerate() {
            if prompt.is_empty() {
                return Err(Error::input(format!("prompt {row}"), "is empty"));
            }
            if let Some((col, &token)) = prompt
                .iter()
                .enumerate()
                .find(|(_, t)| **t as usize >= vocab_size)
            {
                return Err(Error::TokenOutOfRange {
                    input: "prompts".into(),
                    row,
                    col,
                    token: token.into(),
                    vocab_size,
                });
            }
        }
        Ok(())
    }

    /// The tokens that end a row, and the one that pads: the config's, else the model's
    /// (generation defaults, then `config.json`), the pad falling back to the first stop token,
    /// then 0. Each must be below the vocabulary size.
    fn stop_and_pad_ids(&self, config: &GenerationConfig) -> Result<(Vec<u32>, u32)> {
        let cfg = self.config();
        let in_vocab = |name: &'static str, id: u32| {
            if id as usize >= cfg.vocab_size {
                return Err(Error::Generation {
                    name,
                    value: id.to_string(),
                    message: format!("not below vocab_size {}", cfg.vocab_size),
                });
            }
            Ok(())
        };
        let eos = config
            .eos_token_ids
            .clone()
            .unwrap_or_else(|| self.eos_token_ids());
        for &id in &eos {
            in_vocab("eos_token_ids", id)?;
        }
        let pad = config
            .pad_token_id
            .or(self.generation_defaults().pad_token_id)
            .or(cfg.pad_token_id)
            .or(eos.first().copied())
            .unwrap_or(0);
        in_vocab("pad_token_id", pad)?;
        Ok((eos, pad))
    }
}

/// Prompts left-padded to one width, with the mask that hides the padding.
struct LeftPadded {
    ids: Vec<u32>,
    mask: Vec<u32>,
    width: usize,
}

impl LeftPadded {
    fn new(prompts: &[Vec<u32>], pad: u32) -> Self {
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(prompts.len() * width);
        let mut mask = Vec::with_capacity(prompts.len() * width);
        for prompt in prompts {
            let padding = width - prompt.len();
            ids.extend(std::iter::repeat_n(pad, padding).chain(prompt.iter().copied()));
            mask.extend(
                std::iter::repeat_n(0u32, padding).chain(std::iter::repeat_n(1u32, prompt.len())),
            );
        }
        Self { ids, mask, width }
    }
}

/// One generation in progress: what each row has produced and whether it has ended.
struct Decoding<'a> {
    model: &'a CausalLM,
    config: &'a GenerationConfig,
    eos: Vec<u32>,
    pad: u32,
    new_tokens: Vec<Vec<u32>>,
    finished: Vec<bool>,
    step_logits: Vec<Tensor>,
    routes: RouteRecorder,
    sampler: Sampler,
}

impl Decoding<'_> {
    /// Runs the prompt, then one token per unfinished row per step, until `max_new_tokens`
    /// or every row has ended.
    fn decode(&mut self, prompt: LeftPadded, on_token: &mut impl FnMut(usize, u32)) -> Result<()> {
        let (model, batch) = (self.model, self.new_tokens.len());
        let device = model.device();
        let capacity = prompt.width + self.config.max_new_tokens;
        let mut cache = model.new_cache(batch, capacity)?;
        let options = ForwardOptions {
            logits: LogitsMode::Last,
            output_router_logits: Some(self.config.output_routed_experts),
            ..ForwardOptions::default()
        };
        let real: Vec<bool> = prompt.mask.iter().map(|&m| m != 0).collect();
        let prompt_ids = Tensor::from_vec(prompt.ids, (batch, prompt.width), device)?;
        let mask = Tensor::from_vec(prompt.mask, (batch, prompt.width), device)?;
        let mut out = model.forward_with(&prompt_ids, Some(&mask), Some(&mut cache), &options)?;
        self.routes.record(&out.router_logits, &real)?;
        for step in 0..self.config.max_new_tokens {
            let (next, fed) = self.choose(step, &mut out, &prompt_ids, on_token)?;
            let done = self.finished.iter().all(|&f| f);
            if step + 1 == self.config.max_new_tokens || done {
                break;
            }
            let next = Tensor::from_vec(next, (batch, 1), device)?;
            out = model.forward_with(&next, None, Some(&mut cache), &options)?;
            self.routes.record(&out.router_logits, &fed)?;
        }
        Ok(())
    }

    /// Step `step`: the next token of every unfinished row from the pass's last logits (the
    /// pad token for finished rows), and which rows were fed a real token.
    fn choose(
        &mut self,
        step: usize,
        out: &mut ForwardOutput,
        prompt_ids: &Tensor,
        on_token: &mut impl FnMut(usize, u32),
    ) -> Result<(Vec<u32>, Vec<bool>)> {
        let batch = self.new_tokens.len();
        let logits = out
            .logits
            .take()
            .ok_or_else(|| Error::input("logits", "not computed"))?
            .squeeze(1)?;
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        if self.config.output_logits {
            self.step_logits.push(logits);
        }
        let mut next = vec![self.pad; batch];
        let mut fed = vec![false; batch];
        for (r, mut row) in rows.into_iter().enumerate() {
            if self.finished[r] {
                continue;
            }
            if row.iter().any(|l| l.is_nan() || *l == f32::INFINITY) {
                return Err(Error::NonFinite {
                    what: format!("the logits of row {r} at generation step {step}"),
                    diagnosis: self.model.diagnose_non_finite(&prompt_ids.narrow(0, r, 1)?),
                });
            }
            if step < self.config.min_new_tokens {
                for &e in &self.eos {
                    row[e as usize] = f32::NEG_INFINITY;
                }
            }
            let token = self.sampler.pick(&row);
            next[r] = token;
            fed[r] = true;
            self.new_tokens[r].push(token);
            on_token(r, token);
            if !self.config.ignore_eos && self.eos.contains(&token) {
                self.finished[r] = true;
            }
        }
        Ok((next, fed))
    }

    /// The sequences (prompt, then new tokens), and what was recorded on the way.
    fn finish(self, prompts: &[Vec<u32>]) -> Result<Generation> {
        let sequences: Vec<Vec<u32>> = prompts
            .iter()
            .zip(&self.new_tokens)
            .map(|(p, n)| p.iter().chain(n).copied().collect())
            .collect();
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        Ok(Generation {
            routed_experts: self.routes.finish(&lengths, self.model.device())?,
            sequences,
            new_tokens: self.new_tokens,
            logits: self.step_logits,
        })
    }
}
