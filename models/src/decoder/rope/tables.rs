//! The cos/sin tables of one forward pass, and the rotation they apply.

use candle_core::{DType, Device, Tensor};

use crate::decoder::positions::Positions;
use crate::decoder::rope::RopeConfig;

impl RopeConfig {
    /// The cos/sin tables for `positions`, each `[batch, seq, dim / 2]` in `dtype` on `device`.
    pub fn tables(
        &self,
        positions: &Positions,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<RopeTables> {
        let (inv_freq, scale) = self.inv_freq(positions.max_position() as usize + 1);
        let half = inv_freq.len();
        let n = positions.ids().len() * half;
        let mut cos = Vec::with_capacity(n);
        let mut sin = Vec::with_capacity(n);
        for &p in positions.ids() {
            let p = p as f32;
            for &f in &inv_freq {
                let angle = p * f;
                cos.push(angle.cos() * scale);
                sin.push(angle.sin() * scale);
            }
        }
        let shape = (positions.batch(), positions.seq_len(), half);
        let cos = Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?;
        Ok(RopeTables { cos, sin })
    }
}

/// The cos/sin tables of one forward pass: `[batch, seq, rotary_dim / 2]` each, for the
/// positions of the pass's tokens (row by row, so left padding shifts them).
#[derive(Clone, Debug)]
pub struct RopeTables {
    /// Cosines (already multiplied by the rope type's attention factor).
    pub cos: Tensor,
    /// Sines (likewise).
    pub sin: Tensor,
}

impl RopeTables {
    /// Rotates `x`, laid out `[batch, seq, heads, head_dim]` (the projection's natural
    /// layout), in the rotate-half convention of transformers ([`crate::ops::rope`]).
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::ops::rope(x, &self.cos, &self.sin)
    }
}
