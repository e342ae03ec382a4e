//! RL at batch scale: rollouts from an inference engine (vLLM, SGLang, or this crate's
//! [`generate`](crate::CausalLM::generate)) as they arrive, padded into one training batch
//! with their routing aligned ([`RolloutBatch`]); and the rollout-vs-trainer routing report
//! ([`routing_report`]).
//!
//! # How a rollout lines up
//!
//! A rollout of `P` prompt tokens and `C` completion tokens is a sequence of `P + C` tokens.
//! An engine records the experts of the tokens that went through a forward pass: every token
//! but the last generated one (which was sampled, never fed back), so `P + C - 1` rows, row
//! `r` for position `r` (vLLM's `CompletionOutput.routed_experts`, SGLang's
//! `meta_info.routed_experts`). SGLang's `routed_experts_start_len = S` drops the first `S`
//! rows: row `r` is then position `S + r` ([`Rollout::routed_experts_start`]).
//!
//! - Rows accepted: exactly `P + C - 1 - S` (the engines' layout) or `P + C - S` (a row for
//!   the last position, as [`Generation::routed_experts`](crate::Generation::routed_experts)
//!   returns: it is ignored, since that token went through no pass). Anything else is an
//!   error naming the rollout, its row count and its lengths.
//! - The layer axis counts every decoder layer (SGLang, vLLM: dense layers' entries are
//!   ignored) or the MoE layers only, in order ([`crate::routing::experts_from_vllm`]).
//! - In the batch ([`RolloutBatch::from_rollouts`]) each rollout is one row of `T` columns
//!   (`T` the longest rollout), starting at column 0 ([`Padding::Right`]) or `T - (P + C)`
//!   ([`Padding::Left`]). `attention_mask` is 1 on its tokens; `labels` hold the token id on
//!   completion positions and -100 on prompt and padding positions, not shifted (the loss
//!   shifts, as transformers' `ForCausalLMLoss`: the logits of column `t - 1` score the label
//!   at `t`, so the first completion token is learned from the prompt's last position).
//! - `forced_experts` are `[B * T, top_k]` per MoE layer, row `b * T + t` for column `t` of
//!   row `b`, as `input_ids` flattens: the recorded experts at the positions that were
//!   routed, -1 (route freely) at the last position, before `routed_experts_start`, on
//!   padding, and on every position of a rollout without routing. The last position's routing
//!   only changes its own logits, which predict nothing.
//!
//! # Names users meet upstream
//!
//! Where transformers, vLLM or SGLang name a thing differently, the JSON reader
//! ([`Rollout::from_json`], `patchwork rollouts`) and the CLI accept their names too:
//!
//! | here | transformers | vLLM | SGLang |
//! | --- | --- | --- | --- |
//! | `prompt_ids` | `input_ids` | `prompt_token_ids` | `input_ids` (the request) |
//! | `completion_ids` | (`generate`'s new tokens) | `token_ids` (`CompletionOutput`) | `output_ids` |
//! | `routed_experts` (a rollout's, `[tokens, layers, top_k]`) | — | `routed_experts` | `meta_info.routed_experts`, `sglext.routed_experts` (base64, `routed_experts_dtype`) |
//! | `routed_experts_start` | — | — | `routed_experts_start_len` |
//! | [`ForwardOptions::forced_experts`](crate::ForwardOptions), `selected_experts.L` in files | the upstream page's replayable router's forced indices | — | — |
//! | [`ForwardOptions::output_router_logits`](crate::ForwardOptions) | `output_router_logits` | — | — |
//! | recorded experts ([`crate::routing::experts_from_records`]) | `output_selected_experts` | — | — |
//! | [`GenerationConfig::output_routed_experts`](crate::GenerationConfig) | — | `enable_return_routed_experts` | `return_routed_experts`, `--enable-return-routed-experts` |
//! | [`Padding`], `--padding` | `padding_side`, `--padding-side` | — | — |
//! | `--forced-experts FILE` (`selected_experts.L`) | — | `--routed-experts FILE` (`routed_experts`, `[B*T or B, T, layers, top_k]`) | — |
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use patchwork_models::rollouts::{Padding, Rollout, RolloutBatch};
//! let config = serde_json::json!({
//!     "model_type": "qwen3_moe", "vocab_size": 32, "hidden_size": 16,
//!     "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
//!     "num_key_value_heads": 1, "head_dim": 8, "num_experts": 4,
//!     "num_experts_per_tok": 1, "moe_intermediate_size": 8,
//! });
//! let config = patchwork_models::family::decoder_config(&config, "config")?;
//! // 2 prompt + 2 completion tokens: vLLM recorded 3 rows (the last token was never run).
//! let routed = Tensor::new(&[[[3i64]], [[1]], [[2]]], &Device::Cpu)?;
//! let long = Rollout::new(&[5, 6], &[7, 8]).with_routed_experts(routed);
//! let short = Rollout::new(&[9], &[10]); // no routing: routes freely
//! let batch = RolloutBatch::from_rollouts(&[long, short], &config, Padding::Left, Some(0))?;
//! assert_eq!(batch.input_ids.to_vec2::<i64>()?, [[5, 6, 7, 8], [0, 0, 9, 10]]);
//! assert_eq!(batch.attention_mask.to_vec2::<i64>()?, [[1, 1, 1, 1], [0, 0, 1, 1]]);
//! assert_eq!(batch.labels.to_vec2::<i64>()?, [[-100, -100, 7, 8], [-100, -100, -100, 10]]);
//! let layer0 = batch.forced_experts[&0].flatten_all()?.to_vec1::<i64>()?;
//! assert_eq!(layer0, [3, 1, 2, -1, -1, -1, -1, -1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod agreement;
mod batch;
mod json;
mod log_probs;
mod report;
mod rollout;
mod sglang;

pub use agreement::{LayerAgreement, TokenAgreement};
pub use batch::{Padding, RolloutBatch};
pub use json::{MAX_ROLLOUTS_BYTES, read_rollouts};
pub use log_probs::{KL_DIRECTION, LabelLogProb};
pub use report::{ReportSummary, RoutingReport, routing_report};
pub use rollout::Rollout;
pub use sglang::{encode_sglang_routed_experts, sglang_routed_experts};
