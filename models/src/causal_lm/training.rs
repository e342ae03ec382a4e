//! Training and saving: the trainable variables, gradients by checkpoint key, and
//! `save_pretrained`, each through the reverse of the transforms the weights were loaded with.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use patch_checkpoint::{SaveOptions, SaveReport, to_checkpoint_layout};

use super::CausalLM;
use crate::{Error, Result};

impl CausalLM {
    /// The trainable variables, by parameter name (`model.layers.0.self_attn.q_proj.weight`,
    /// `model.layers.0.mlp.experts.gate_up_proj`, ...), to hand to an optimiser
    /// (`AdamW::new(model.vars()?.all_vars(), ..)`); an error unless loaded with
    /// [`LoadOptions::trainable`](crate::LoadOptions::trainable).
    pub fn vars(&self) -> Result<&VarMap> {
        self.vars
            .as_ref()
            .ok_or(Error::NotTrainable { what: "vars" })
    }

    /// Every gradient of `grads` (what `loss.backward()` returned), keyed by the checkpoint
    /// tensor it belongs to and in that tensor's layout, float32: the reverse transforms apply
    /// to gradients as saving applies them to weights (a stacked-experts gradient split per
    /// expert, a fused q/k/v gradient into three), and a tied head counts once, through the
    /// embedding it shares. A parameter the loss does not depend on gets zeros.
    pub fn gradients(&self, grads: &GradStore) -> Result<BTreeMap<String, Tensor>> {
        if !self.weights.is_trainable() {
            return Err(Error::NotTrainable { what: "gradients" });
        }
        Ok(to_checkpoint_layout(
            &self.weights,
            &self.transforms,
            |_, param| {
                Ok(match grads.get(param) {
                    Some(g) => g.to_dtype(DType::F32)?,
                    None => param.zeros_like()?.to_dtype(DType::F32)?,
                })
            },
        )?)
    }

    /// Writes the config and weights to `dir` in the checkpoint layout transformers reads:
    /// every tensor goes back under its original key through the reverse of the transforms
    /// that produced it (stacked experts split per expert, a replacement's fused q/k/v split
    /// into three), tied heads left out, sharded above `options.max_shard_size`.
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<std::path::Path>,
        options: &SaveOptions,
    ) -> Result<SaveReport> {
        Ok(patch_checkpoint::save_pretrained(
            dir,
            self.config_json(),
            &self.weights,
            &self.transforms,
            options,
        )?)
    }
}
