//! The experts each generated sequence's tokens were routed to, collected pass after pass in
//! vLLM's `routed_experts` layout.

use candle_core::Tensor;

use crate::Result;

/// Collects, per row, the experts each real token was routed to, pass after pass.
pub(super) struct RouteRecorder {
    enabled: bool,
    /// Per row: one entry per real token run, `num_moe_layers * top_k` ids.
    rows: Vec<Vec<Vec<i64>>>,
    /// `(num_moe_layers, top_k)`, once a pass recorded something.
    shape: Option<(usize, usize)>,
}

impl RouteRecorder {
    pub(super) fn new(batch: usize, enabled: bool) -> Self {
        Self {
            enabled,
            rows: vec![Vec::new(); batch],
            shape: None,
        }
    }

    /// Records a pass's routing; `real[row * seq + t]` says whether that token belongs to the
    /// row's sequence (not padding, not a finished row's filler).
    pub(super) fn record(
        &mut self,
        records: &[crate::decoder::RouterRecord],
        real: &[bool],
    ) -> Result<()> {
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
    pub(super) fn finish(
        self,
        lengths: &[usize],
        device: &candle_core::Device,
    ) -> Result<Vec<Tensor>> {
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
