//! The rollout-vs-trainer routing report: how far the trainer's own routing is from the
//! rollout's, and what replaying the rollout's changes in the labels' log-probabilities.

use std::collections::BTreeMap;
use std::fmt;

use candle_core::{DType, Tensor};

use super::RolloutBatch;
use super::agreement::{LayerAgreement, TokenAgreement, compare_routing};
use super::log_probs::{KL_DIRECTION, LabelLogProb, label_log_probs};
use crate::loss::{IGNORE_INDEX, integer_values};
use crate::{CausalLM, Error, ForwardOptions, Result};

/// What [`routing_report`] finds (serialised as `patchwork routing-report` writes it).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RoutingReport {
    /// The figures in short.
    pub summary: ReportSummary,
    /// Per MoE layer of the rollout's routing, in layer order.
    pub layers: Vec<LayerAgreement>,
    /// Per compared token, row-major.
    pub tokens: Vec<TokenAgreement>,
    /// Per label, row-major.
    pub labels: Vec<LabelLogProb>,
}

/// The report's figures in short.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ReportSummary {
    /// Rows of the batch.
    pub rows: usize,
    /// Columns of the batch.
    pub seq_len: usize,
    /// Tokens compared in at least one MoE layer.
    pub tokens_compared: usize,
    /// Of those, the tokens whose top-k set differs in at least one layer.
    pub tokens_differing: usize,
    /// `tokens_differing / tokens_compared` (Megatron-LM #4168's "tokens differing in at least
    /// one layer").
    pub share_tokens_differing: Option<f64>,
    /// (token, layer) router decisions compared.
    pub decisions_compared: usize,
    /// Of those, the decisions whose top-k set differs.
    pub decisions_differing: usize,
    /// `decisions_differing / decisions_compared` (the share of routers disagreeing per pass).
    pub share_decisions_differing: Option<f64>,
    /// Mean top-k overlap over every decision compared.
    pub mean_overlap: Option<f64>,
    /// Up to three layers with differences, the lowest share of identical tokens first.
    pub worst_layers: Vec<usize>,
    /// Labels scored.
    pub labels: usize,
    /// Mean label log-probability under the trainer's own routing.
    pub mean_log_prob_free: Option<f64>,
    /// Mean label log-probability under the rollout's routing replayed.
    pub mean_log_prob_replayed: Option<f64>,
    /// Mean of `replayed - free` over the labels.
    pub mean_log_prob_difference: Option<f64>,
    /// Largest `|replayed - free|`.
    pub max_abs_log_prob_difference: Option<f64>,
    /// Mean KL over the labels' positions.
    pub mean_kl: Option<f64>,
    /// Largest KL.
    pub max_kl: Option<f64>,
    /// The KL's direction ([`KL_DIRECTION`]).
    pub kl: &'static str,
}

/// Runs `model` twice over one batch, once routing freely (the trainer's own routing, with
/// router outputs returned) and once replaying `forced_experts` (the rollout's, `[B*T,
/// top_k]` per MoE layer, -1 = free), and compares them: per layer the share of tokens whose
/// top-k set is the same and the mean overlap, per token the layers that differ, per label
/// the log-probability under each pass, their difference and the KL between the two
/// next-token distributions ([`KL_DIRECTION`]).
///
/// Only real tokens count (`attention_mask` 1; none = all); a token is compared in a layer
/// when the rollout's ids there are all recorded. `labels` (`[B, T]`, -100 ignored, not
/// shifted: the logits at `t - 1` score the label at `t`, as the loss does) default to the
/// tokens themselves wherever the token and the one before it are real.
pub fn routing_report(
    model: &CausalLM,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    labels: Option<&Tensor>,
    forced_experts: &BTreeMap<usize, Tensor>,
) -> Result<RoutingReport> {
    let top_k = model.config().moe()?.num_experts_per_tok;
    if forced_experts.is_empty() {
        return Err(Error::input(
            "forced_experts",
            "no routing to compare: give the rollout's experts of at least one MoE layer",
        ));
    }
    let free = model.forward_with(
        input_ids,
        attention_mask,
        None,
        &ForwardOptions {
            output_router_logits: Some(true),
            ..ForwardOptions::default()
        },
    )?;
    let replayed = model.forward_with(
        input_ids,
        attention_mask,
        None,
        &ForwardOptions {
            output_router_logits: Some(true),
            forced_experts: forced_experts.clone(),
            ..ForwardOptions::default()
        },
    )?;
    // The passes checked the ids, the mask and the routing.
    let (rows, seq) = input_ids.dims2()?;
    let mask: Vec<u8> = match attention_mask {
        Some(m) => m
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?
            .into_iter()
            .map(|v| (v != 0.0) as u8)
            .collect(),
        None => vec![1; rows * seq],
    };
    let labels = match labels {
        Some(l) if l.dims() != [rows, seq] => {
            return Err(Error::input(
                "labels",
                format!(
                    "expected shape [{rows}, {seq}] like input_ids, found {:?}",
                    l.dims()
                ),
            ));
        }
        Some(l) => integer_values("labels", l)?,
        None => integer_values("input_ids", input_ids)?
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                let real = mask[i] == 1 && i % seq > 0 && mask[i - 1] == 1;
                if real { id } else { IGNORE_INDEX }
            })
            .collect(),
    };
    // Only real tokens count, whatever a label says on padding.
    let labels: Vec<i64> = labels
        .into_iter()
        .zip(&mask)
        .map(|(l, &m)| if m == 1 { l } else { IGNORE_INDEX })
        .collect();
    let trainer: BTreeMap<usize, Vec<i64>> = free
        .router_logits
        .iter()
        .map(|r| {
            Ok((
                r.layer,
                integer_values("selected experts", &r.router.indices)?,
            ))
        })
        .collect::<Result<_>>()?;
    let rollout: BTreeMap<usize, Vec<i64>> = forced_experts
        .iter()
        .map(|(l, t)| Ok((*l, integer_values(&format!("forced_experts[{l}]"), t)?)))
        .collect::<Result<_>>()?;
    let (layers, tokens) = compare_routing(&trainer, &rollout, top_k, &mask, seq);
    let logits = |out: &crate::ForwardOutput| {
        out.logits
            .as_ref()
            .map(Tensor::detach)
            .ok_or_else(|| Error::input("logits", "not computed"))
    };
    let labels = label_log_probs(&logits(&free)?, &logits(&replayed)?, &labels)?;
    let summary = summarise(rows, seq, &layers, &tokens, &labels);
    Ok(RoutingReport {
        summary,
        layers,
        tokens,
        labels,
    })
}

impl RolloutBatch {
    /// [`routing_report`] over this batch: its tokens, mask, labels and routing.
    pub fn routing_report(&self, model: &CausalLM) -> Result<RoutingReport> {
        routing_report(
            model,
            &self.input_ids,
            Some(&self.attention_mask),
            Some(&self.labels),
            &self.forced_experts,
        )
    }
}

/// The summary of a report's parts.
fn summarise(
    rows: usize,
    seq_len: usize,
    layers: &[LayerAgreement],
    tokens: &[TokenAgreement],
    labels: &[LabelLogProb],
) -> ReportSummary {
    let share = |n: usize, of: usize| (of > 0).then(|| n as f64 / of as f64);
    let mean = |values: &mut dyn Iterator<Item = f64>| {
        let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        (n > 0).then(|| sum / n as f64)
    };
    let max = |values: &mut dyn Iterator<Item = f64>| values.reduce(f64::max);
    let tokens_differing = tokens.iter().filter(|t| t.layers_differing > 0).count();
    let decisions_compared: usize = layers.iter().map(|l| l.tokens).sum();
    let decisions_differing: usize = layers.iter().map(|l| l.tokens - l.identical).sum();
    let overlap_sum: f64 = layers
        .iter()
        .map(|l| l.mean_overlap.unwrap_or(0.0) * l.tokens as f64)
        .sum();
    let mut worst: Vec<&LayerAgreement> =
        layers.iter().filter(|l| l.identical < l.tokens).collect();
    worst.sort_by(|a, b| {
        let s = |l: &LayerAgreement| l.share_identical.unwrap_or(1.0);
        s(a).total_cmp(&s(b)).then(a.layer.cmp(&b.layer))
    });
    ReportSummary {
        rows,
        seq_len,
        tokens_compared: tokens.len(),
        tokens_differing,
        share_tokens_differing: share(tokens_differing, tokens.len()),
        decisions_compared,
        decisions_differing,
        share_decisions_differing: share(decisions_differing, decisions_compared),
        mean_overlap: (decisions_compared > 0).then(|| overlap_sum / decisions_compared as f64),
        worst_layers: worst.iter().take(3).map(|l| l.layer).collect(),
        labels: labels.len(),
        mean_log_prob_free: mean(&mut labels.iter().map(|l| l.free)),
        mean_log_prob_replayed: mean(&mut labels.iter().map(|l| l.replayed)),
        mean_log_prob_difference: mean(&mut labels.iter().map(|l| l.difference)),
        max_abs_log_prob_difference: max(&mut labels.iter().map(|l| l.difference.abs())),
        mean_kl: mean(&mut labels.iter().map(|l| l.kl)),
        max_kl: max(&mut labels.iter().map(|l| l.kl)),
        kl: KL_DIRECTION,
    }
}

impl fmt::Display for RoutingReport {
    /// The short summary `patchwork routing-report` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v));
        let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        let sci = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3e}"));
        writeln!(
            f,
            "routing report: {} rows x {} positions, {} tokens compared over {} MoE layers",
            s.rows,
            s.seq_len,
            s.tokens_compared,
            self.layers.len()
        )?;
        writeln!(
            f,
            "  tokens differing in some layer: {} of {} ({}); router decisions differing: {} of {} ({}); mean top-k overlap {}",
            s.tokens_differing,
            s.tokens_compared,
            pct(s.share_tokens_differing),
            s.decisions_differing,
            s.decisions_compared,
            pct(s.share_decisions_differing),
            num(s.mean_overlap)
        )?;
        if s.worst_layers.is_empty() {
            writeln!(
                f,
                "  worst layers: none (every layer picks the rollout's experts)"
            )?;
        } else {
            let worst: Vec<String> = s
                .worst_layers
                .iter()
                .filter_map(|w| self.layers.iter().find(|l| l.layer == *w))
                .map(|l| {
                    format!(
                        "{} ({} identical, overlap {})",
                        l.layer,
                        pct(l.share_identical),
                        num(l.mean_overlap)
                    )
                })
                .collect();
            writeln!(f, "  worst layers: {}", worst.join(", "))?;
        }
        write!(
            f,
            "  {} labels: log-prob free {}, replayed {}, mean difference {} (max |d| {}); KL(replayed || free) mean {}, max {}",
            s.labels,
            num(s.mean_log_prob_free),
            num(s.mean_log_prob_replayed),
            sci(s.mean_log_prob_difference),
            sci(s.max_abs_log_prob_difference),
            sci(s.mean_kl),
            sci(s.max_kl)
        )
    }
}
