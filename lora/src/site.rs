//! What one wrapped projection holds: its base, what each adapter puts there, and the merged
//! layer while an adapter is merged; and the state every wrapped projection of a model
//! shares (which adapter is active, training or not).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use candle_core::Tensor;
use patchwork_models::decoder::{Linear, PassContext, Projection};

use crate::options::ActiveAdapter;
use crate::weights::AtSite;
use crate::{Error, Result};

/// The state every wrapped projection of one model reads.
pub(crate) struct Shared {
    /// Adapter names, by index.
    pub names: Vec<String>,
    /// The adapter applied when a call does not choose.
    pub active: RwLock<Option<usize>>,
    /// Training mode: dropout on the adapters' input.
    pub training: AtomicBool,
}

impl Shared {
    /// The index of the adapter named `name`.
    pub fn index(&self, name: &str) -> Result<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| Error::UnknownAdapter {
                name: name.to_string(),
                known: self.names.clone(),
            })
    }
}

/// One wrapped projection.
pub(crate) struct Site {
    pub path: String,
    pub base: Box<dyn Projection>,
    /// What each adapter puts here, by adapter index.
    pub adapters: Vec<Option<AtSite>>,
    /// While an adapter is merged: its index and `W + s·BA` as a float layer.
    pub merged: RwLock<Option<(usize, Linear)>>,
    pub shared: Arc<Shared>,
}

impl Site {
    /// The adapter this call applies: the call's [`ActiveAdapter`], else the model's.
    fn active(&self, pass: &PassContext) -> candle_core::Result<Option<usize>> {
        match pass.extension::<ActiveAdapter>() {
            Some(ActiveAdapter(None)) => Ok(None),
            Some(ActiveAdapter(Some(name))) => self
                .shared
                .index(name)
                .map(Some)
                .map_err(|e| candle_core::Error::Msg(e.to_string())),
            None => Ok(*self
                .shared
                .active
                .read()
                .unwrap_or_else(PoisonError::into_inner)),
        }
    }

    pub fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        let Some(i) = self.active(pass)? else {
            return self.base.forward(x, pass);
        };
        if let Some((m, linear)) = &*self.merged.read().unwrap_or_else(PoisonError::into_inner)
            && *m == i
        {
            return Projection::forward(linear, x, pass);
        }
        match self.adapters.get(i).and_then(Option::as_ref) {
            None => self.base.forward(x, pass),
            Some(AtSite::Saved { weight, bias }) => {
                patchwork_models::ops::linear(x, &weight.to_dtype(x.dtype())?, bias.as_ref())
            }
            Some(AtSite::Lora {
                a,
                b,
                scale,
                dropout,
                base,
            }) => {
                let y = match base {
                    Some((w, bias)) => {
                        patchwork_models::ops::linear(x, &w.to_dtype(x.dtype())?, bias.as_ref())?
                    }
                    None => self.base.forward(x, pass)?,
                };
                let training = self.shared.training.load(Ordering::Relaxed);
                let h = if training && *dropout > 0.0 {
                    candle_nn::ops::dropout(x, *dropout as f32)?
                } else {
                    x.clone()
                };
                // The models' own linear: the kernels for frozen float32 adapters, candle's
                // differentiable ops for trainable ones (PERFORMANCE.md: LoRA).
                let low = patchwork_models::ops::linear(&h, a, None)?;
                let delta = patchwork_models::ops::linear(&low, b, None)?;
                let delta = if *scale == 1.0 {
                    delta
                } else {
                    delta.affine(*scale, 0.0)?
                };
                let delta = delta.to_dtype(y.dtype())?;
                y + delta
            }
        }
    }

    /// `W + s·BA` for adapter `i` as a float layer, if adapter `i` adds a product here; an
    /// error naming the path when the base is not a float `Linear`.
    pub fn merged_layer(&self, i: usize) -> Result<Option<Linear>> {
        let Some(AtSite::Lora {
            a, b, scale, base, ..
        }) = self.adapters.get(i).and_then(Option::as_ref)
        else {
            return Ok(None);
        };
        if let Some((w, bias)) = base {
            let delta = b.matmul(a)?.affine(*scale, 0.0)?;
            return Ok(Some(Linear::new((w + delta)?, bias.clone())));
        }
        let base = self.base.as_any().downcast_ref::<Linear>().ok_or_else(|| {
            Error::Invalid(format!(
                "cannot merge into {:?}: its base is {}, not a float Linear (merging into quantized weights is not supported)",
                self.path,
                self.base.type_name()
            ))
        })?;
        let w = base.weight()?;
        let delta = b.matmul(a)?.affine(*scale, 0.0)?;
        let merged = (w.to_dtype(delta.dtype())? + delta)?.to_dtype(w.dtype())?;
        Ok(Some(Linear::new(merged, base.bias()?)))
    }
}
