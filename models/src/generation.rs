//! Text generation: greedy or seeded sampling (temperature, top-k, top-p), stop at eos,
//! padded batches, a per-token callback for streaming, with a KV cache allocated once and
//! logits computed for the last position only.

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::causal_lm::{CausalLM, ForwardOptions, LogitsMode};
use crate::{Error, Result};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on ties, as `argmax`).
    Greedy,
    /// A draw from the distribution after, in transformers' order, temperature, top-k and
    /// top-p; reproducible for a given seed (and `rand` version).
    Sample {
        /// Logits are divided by it; must be positive.
        temperature: f64,
        /// Keep only the `k` most likely tokens (ties at the k-th kept).
        top_k: Option<usize>,
        /// Keep the smallest set of most likely tokens whose probability reaches `p`, in (0, 1].
        top_p: Option<f64>,
        /// Seed of the random generator.
        seed: u64,
    },
}

/// Generation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// Tokens to generate at most per row.
    pub max_new_tokens: usize,
    /// End-of-sequence tokens are suppressed until this many were generated (transformers'
    /// `min_new_tokens`).
    pub min_new_tokens: usize,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Tokens that end a row; `None` takes the model's ([`CausalLM::eos_token_ids`]:
    /// `generation_config.json`'s, else `config.json`'s `eos_token_id`).
    pub eos_token_ids: Option<Vec<u32>>,
    /// Keep generating after an end-of-sequence token (it is still emitted).
    pub ignore_eos: bool,
    /// Token that left-pads shorter prompts and fills finished rows; `None` takes the
    /// model's `pad_token_id` (generation config, then config), else its first eos token, else
    /// 0. Padding is masked out, so the
    /// choice never changes the result.
    pub pad_token_id: Option<u32>,
    /// Return each step's logits (float32 `[batch, vocab]`, before any processing).
    pub output_logits: bool,
    /// Record the experts every token of each sequence was routed to (MoE models), ready to
    /// replay in a training pass over the sequence ([`Generation::routed_experts`]).
    pub output_routed_experts: bool,
}

/// The special token ids a checkpoint publishes in `generation_config.json`; where given they
/// override `config.json`'s, as transformers' `GenerationConfig` does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerationDefaults {
    /// `bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (an id or a list).
    pub eos_token_ids: Option<Vec<u32>>,
    /// `pad_token_id`.
    pub pad_token_id: Option<u32>,
}

impl GenerationDefaults {
    /// Reads `generation_config.json` at `path`; every id must be below `vocab_size`.
    pub fn from_file(path: &std::path::Path, vocab_size: usize) -> Result<Self> {
        let json = patch_checkpoint::files::read_json(path)?;
        let source = path.display().to_string();
        let check = crate::decoder::ConfigCheck::new(&source);
        let ids = |key: &str| -> Result<Option<Vec<u32>>> {
            Ok(match json.get(key) {
                None | Some(serde_json::Value::Null) => None,
                v => Some(check.token_ids(key, v, vocab_size)?),
            })
        };
        let first =
            |key: &str| -> Result<Option<u32>> { Ok(ids(key)?.and_then(|v| v.first().copied())) };
        Ok(Self {
            bos_token_id: first("bos_token_id")?,
            eos_token_ids: ids("eos_token_id")?,
            pad_token_id: first("pad_token_id")?,
        })
    }
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            min_new_tokens: 0,
            sampling: Sampling::Greedy,
            eos_token_ids: None,
            ignore_eos: false,
            pad_token_id: None,
            output_logits: false,
            output_routed_experts: false,
        }
    }
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            ..Self::default()
        }
    }

    /// Checks every setting is in range.
    pub fn validate(&self) -> Result<()> {
        if let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = &self.sampling
        {
            if !(temperature.is_finite() && *temperature > 0.0) {
                return Err(Error::Generation {
                    name: "temperature",
                    value: temperature.to_string(),
                    message:
                        "must be a positive number (use greedy decoding for a deterministic argmax)"
                            .into(),
                });
            }
            if *top_k == Some(0) {
                return Err(Error::Generation {
                    name: "top_k",
                    value: "0".into(),
                    message: "must be at least 1".into(),
                });
            }
            if let Some(p) = top_p
                && !(*p > 0.0 && *p <= 1.0)
            {
                return Err(Error::Generation {
                    name: "top_p",
                    value: p.to_string(),
                    message: "must be in (0, 1]".into(),
                });
            }
        }
        Ok(())
    }
}

/// What [`CausalLM::generate`] returns.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Per row: its prompt, then the generated tokens (up to and including the end-of-sequence
    /// token that stopped it).
    pub sequences: Vec<Vec<u32>>,
    /// Per row: the generated tokens only.
    pub new_tokens: Vec<Vec<u32>>,
    /// Each step's logits `[batch, vocab]`, when asked for (rows already finished included).
    pub logits: Vec<Tensor>,
    /// Per row, when asked for: the experts each token of `sequences[row]` was routed to,
    /// `[len, num_moe_layers, top_k]` (i64), vLLM's `routed_experts` layout
    /// ([`crate::routing::experts_from_vllm`] turns it into forced experts). The last token was
    /// never run through the model: its row is -1 (routes freely on replay).
    pub routed_experts: Vec<Tensor>,
}

/// Picks tokens from logits.
struct Sampler {
    sampling: Sampling,
    rng: Option<StdRng>,
}

impl Sampler {
    fn new(sampling: &Sampling) -> Self {
        let rng = match sampling {
            Sampling::Greedy => None,
            Sampling::Sample { seed, .. } => Some(StdRng::seed_from_u64(*seed)),
        };
        Self {
            sampling: sampling.clone(),
            rng,
        }
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
        match (&self.sampling, &mut self.rng) {
            (
                Sampling::Sample {
                    temperature,
                    top_k,
                    top_p,
                    ..
                },
                Some(rng),
            ) => {
                // Scaled after subtracting the maximum, in f64: however small the temperature,
                // the most likely token stays at 0 and the others go to -inf (greedy), never
                // to NaN.
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let mut scores: Vec<f64> = logits
                    .iter()
                    .map(|&l| (l as f64 - max) / temperature)
                    .collect();
                if let Some(k) = *top_k
                    && k < scores.len()
                {
                    let mut sorted = scores.clone();
                    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
                    let threshold = sorted[k - 1];
                    scores
                        .iter_mut()
                        .filter(|l| **l < threshold)
                        .for_each(|l| *l = f64::NEG_INFINITY);
                }
                let mut probs = softmax(&scores);
                if let Some(p) = *top_p {
                    let mut order: Vec<usize> = (0..probs.len()).collect();
                    order.sort_unstable_by(|&a, &b| probs[a].total_cmp(&probs[b]));
                    let mut cumulative = 0.0f64;
                    let last = order.len() - 1;
                    for (rank, &i) in order.iter().enumerate() {
                        cumulative += probs[i];
                        if cumulative <= 1.0 - p && rank != last {
                            scores[i] = f64::NEG_INFINITY;
                        }
                    }
                    probs = softmax(&scores);
                }
                let u: f64 = rng.random();
                let mut acc = 0.0;
                let mut chosen = argmax(logits);
                for (i, &p) in probs.iter().enumerate() {
                    if p > 0.0 {
                        acc += p;
                        chosen = i as u32;
                        if u < acc {
                            break;
                        }
                    }
                }
                chosen
            }
            _ => argmax(logits),
        }
    }
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(xs: &[f64]) -> Vec<f64> {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = xs.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

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
        let cfg = self.config();
        if prompts.is_empty() {
            return Err(Error::input("prompts", "no prompt given"));
        }
        for (row, prompt) in prompts.iter().enumerate() {
            if prompt.is_empty() {
                return Err(Error::input(format!("prompt {row}"), "is empty"));
            }
            if let Some((col, &token)) = prompt
                .iter()
                .enumerate()
                .find(|(_, t)| **t as usize >= cfg.vocab_size)
            {
                return Err(Error::TokenOutOfRange {
                    input: "prompts".into(),
                    row,
                    col,
                    token: token.into(),
                    vocab_size: cfg.vocab_size,
                });
            }
        }
        let eos = config
            .eos_token_ids
            .clone()
            .unwrap_or_else(|| self.eos_token_ids());
        if let Some(&bad) = eos.iter().find(|&&e| e as usize >= cfg.vocab_size) {
            return Err(Error::Generation {
                name: "eos_token_ids",
                value: bad.to_string(),
                message: format!("not below vocab_size {}", cfg.vocab_size),
            });
        }
        let pad = config
            .pad_token_id
            .or(self.generation_defaults().pad_token_id)
            .or(cfg.pad_token_id)
            .or(eos.first().copied())
            .unwrap_or(0);
        if pad as usize >= cfg.vocab_size {
            return Err(Error::Generation {
                name: "pad_token_id",
                value: pad.to_string(),
                message: format!("not below vocab_size {}", cfg.vocab_size),
            });
        }
        let batch = prompts.len();
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * width);
        let mut mask = Vec::with_capacity(batch * width);
        for prompt in prompts {
            let padding = width - prompt.len();
            ids.extend(std::iter::repeat_n(pad, padding).chain(prompt.iter().copied()));
            mask.extend(
                std::iter::repeat_n(0u32, padding).chain(std::iter::repeat_n(1u32, prompt.len())),
            );
        }
        let capacity = width.checked_add(config.max_new_tokens);
        self.check_positions(
            &format!(
                "a prompt of {width} tokens and max_new_tokens = {}",
                config.max_new_tokens
            ),
            capacity,
        )?;
        let capacity = capacity.unwrap_or(usize::MAX);
        let device = self.device();
        let mut new_tokens = vec![Vec::new(); batch];
        let mut step_logits = Vec::new();
        let mut routes = RouteRecorder::new(batch, config.output_routed_experts);
        if config.max_new_tokens > 0 {
            let mut cache = self.new_cache(batch, capacity)?;
            let options = ForwardOptions {
                logits: LogitsMode::Last,
                output_router_logits: Some(config.output_routed_experts),
                ..ForwardOptions::default()
            };
            let real: Vec<bool> = mask.iter().map(|&m| m != 0).collect();
            let ids = Tensor::from_vec(ids, (batch, width), device)?;
            let prompt_ids = ids.clone();
            let mask = Tensor::from_vec(mask, (batch, width), device)?;
            let mut out = self.forward_with(&ids, Some(&mask), Some(&mut cache), &options)?;
            routes.record(&out.router_logits, &real)?;
            let mut sampler = Sampler::new(&config.sampling);
            let mut finished = vec![false; batch];
            for step in 0..config.max_new_tokens {
                let logits = out
                    .logits
                    .take()
                    .ok_or_else(|| Error::input("logits", "not computed"))?
                    .squeeze(1)?;
                let rows: Vec<Vec<f32>> = logits.to_vec2()?;
                if config.output_logits {
                    step_logits.push(logits);
                }
                let mut next = vec![pad; batch];
                let mut fed = vec![false; batch];
                for (r, mut row) in rows.into_iter().enumerate() {
                    if finished[r] {
                        continue;
                    }
                    if row.iter().any(|l| l.is_nan() || *l == f32::INFINITY) {
                        return Err(Error::NonFinite {
                            what: format!("the logits of row {r} at generation step {step}"),
                            diagnosis: self.diagnose_non_finite(&prompt_ids.narrow(0, r, 1)?),
                        });
                    }
                    if step < config.min_new_tokens {
                        for &e in &eos {
                            row[e as usize] = f32::NEG_INFINITY;
                        }
                    }
                    let token = sampler.pick(&row);
                    next[r] = token;
                    fed[r] = true;
                    new_tokens[r].push(token);
                    on_token(r, token);
                    if !config.ignore_eos && eos.contains(&token) {
                        finished[r] = true;
                    }
                }
                if step + 1 == config.max_new_tokens || finished.iter().all(|&f| f) {
                    break;
                }
                let next = Tensor::from_vec(next, (batch, 1), device)?;
                out = self.forward_with(&next, None, Some(&mut cache), &options)?;
                routes.record(&out.router_logits, &fed)?;
            }
        }
        let sequences: Vec<Vec<u32>> = prompts
            .iter()
            .zip(&new_tokens)
            .map(|(p, n)| p.iter().chain(n).copied().collect())
            .collect();
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        Ok(Generation {
            routed_experts: routes.finish(&lengths, device)?,
            sequences,
            new_tokens,
            logits: step_logits,
        })
    }
}

/// Collects, per row, the experts each real token was routed to, pass after pass.
struct RouteRecorder {
    enabled: bool,
    /// Per row: one entry per real token run, `num_moe_layers * top_k` ids.
    rows: Vec<Vec<Vec<i64>>>,
    /// `(num_moe_layers, top_k)`, once a pass recorded something.
    shape: Option<(usize, usize)>,
}

impl RouteRecorder {
    fn new(batch: usize, enabled: bool) -> Self {
        Self {
            enabled,
            rows: vec![Vec::new(); batch],
            shape: None,
        }
    }

    /// Records a pass's routing; `real[row * seq + t]` says whether that token belongs to the
    /// row's sequence (not padding, not a finished row's filler).
    fn record(&mut self, records: &[crate::decoder::RouterRecord], real: &[bool]) -> Result<()> {
        if !self.enabled || records.is_empty() {
            return Ok(());
        }
        let batch = self.rows.len();
        let layers: Vec<Vec<i64>> = records
            .iter()
            .map(|r| {
                r.router
                    .indices
                    .to_dtype(candle_core::DType::I64)?
                    .flatten_all()?
                    .to_vec1()
            })
            .collect::<candle_core::Result<_>>()?;
        let (tokens, k) = records[0].router.indices.dims2()?;
        self.shape = Some((layers.len(), k));
        let seq = tokens / batch.max(1);
        for (row, entries) in self.rows.iter_mut().enumerate() {
            for t in 0..seq {
                let token = row * seq + t;
                if real.get(token).copied().unwrap_or(false) {
                    let mut ids = Vec::with_capacity(layers.len() * k);
                    for l in &layers {
                        ids.extend_from_slice(&l[token * k..(token + 1) * k]);
                    }
                    entries.push(ids);
                }
            }
        }
        Ok(())
    }

    /// Per row, `[lengths[row], num_moe_layers, top_k]`, rows never run filled with -1.
    fn finish(self, lengths: &[usize], device: &candle_core::Device) -> Result<Vec<Tensor>> {
        let Some((layers, k)) = self.shape else {
            return Ok(Vec::new());
        };
        self.rows
            .into_iter()
            .zip(lengths)
            .map(|(mut entries, &len)| {
                entries.resize(len, vec![-1; layers * k]);
                let flat: Vec<i64> = entries.into_iter().flatten().collect();
                Ok(Tensor::from_vec(flat, (len, layers, k), device)?)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(&Sampling::Greedy);
        assert_eq!(s.pick(&[0.0, 3.0, 1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for (k, p) in [(Some(1), None), (None, Some(1e-6))] {
            let mut s = Sampler::new(&Sampling::Sample {
                temperature: 0.7,
                top_k: k,
                top_p: p,
                seed: 3,
            });
            for _ in 0..20 {
                assert_eq!(s.pick(&[0.1, 2.0, 1.9, -1.0]), 1);
            }
        }
    }

    #[test]
    fn sampling_is_seeded_and_follows_the_distribution() {
        let draw = |seed| {
            let mut s = Sampler::new(&Sampling::Sample {
                temperature: 1.0,
                top_k: None,
                top_p: None,
                seed,
            });
            (0..2000)
                .map(|_| s.pick(&[0.0, (3.0f32).ln()]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        let ones = draw(5).iter().filter(|&&t| t == 1).count() as f64 / 2000.0;
        assert!((ones - 0.75).abs() < 0.04, "{ones}");
    }

    #[test]
    fn top_k_excludes_the_tail() {
        let mut s = Sampler::new(&Sampling::Sample {
            temperature: 1.0,
            top_k: Some(2),
            top_p: None,
            seed: 1,
        });
        for _ in 0..200 {
            assert!(s.pick(&[1.0, 1.1, 0.9, 1.05]) != 2);
        }
    }

    #[test]
    fn bad_settings_are_errors() {
        for sampling in [
            Sampling::Sample {
                temperature: 0.0,
                top_k: None,
                top_p: None,
                seed: 0,
            },
            Sampling::Sample {
                temperature: 1.0,
                top_k: Some(0),
                top_p: None,
                seed: 0,
            },
            Sampling::Sample {
                temperature: 1.0,
                top_k: None,
                top_p: Some(1.5),
                seed: 0,
            },
        ] {
            let cfg = GenerationConfig {
                sampling,
                ..GenerationConfig::default()
            };
            let e = cfg.validate().err().unwrap().to_string();
            assert!(e.contains("generation setting "), "{e}");
        }
    }
}
