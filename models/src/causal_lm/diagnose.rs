//! Where NaN or infinite values come from, for the error a non-finite pass reports.

use candle_core::{DType, Tensor};

use super::CausalLM;
use super::options::{ForwardOptions, LogitsMode};
use crate::decoder::Selection;

impl CausalLM {
    /// Where NaN or infinite values in a pass over `input_ids` (`[batch, seq]`) come from: the
    /// first weight holding one, else the first hidden state (by
    /// [`ForwardOptions::output_hidden_states`]'s index) holding one, else the output head.
    /// What [`Error::NonFinite`](crate::Error::NonFinite) says; slow (it scans every weight and reruns the pass).
    pub fn diagnose_non_finite(&self, input_ids: &Tensor) -> String {
        let first_bad = |t: &Tensor| -> Option<usize> {
            let values = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .ok()?;
            values.iter().position(|v| !v.is_finite())
        };
        let mut params = self.weights.params().snapshot();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in &params {
            if let Some(i) = first_bad(t) {
                return format!("weight {name:?} holds a NaN or infinite value (element {i})");
            }
        }
        let options = ForwardOptions {
            logits: LogitsMode::None,
            output_hidden_states: Selection::All,
            ..ForwardOptions::default()
        };
        match self.forward_with(input_ids, None, None, &options) {
            Ok(out) => {
                for (i, h) in &out.hidden_states {
                    if first_bad(h).is_some() {
                        let what = match *i {
                            0 => "the embedding output".to_string(),
                            i if i == self.model.layers.len() => {
                                "the final norm's output".to_string()
                            }
                            i => format!("the output of layer {}", i - 1),
                        };
                        return format!(
                            "the weights are finite; hidden state {i} ({what}) is the first to hold NaN or infinity"
                        );
                    }
                }
                "the weights and hidden states are finite; the output head overflowed".into()
            }
            Err(e) => format!("the weights are finite; rerunning the pass failed: {e}"),
        }
    }
}
