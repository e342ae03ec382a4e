//! Training an adapter: its variables, its gradients by PEFT's keys, and saving it as PEFT
//! does.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::{Error, LoraAdapters, Result};

impl LoraAdapters {
    /// The trainable variables of adapter `name`, by PEFT's key (empty unless read
    /// [trainable](crate::LoraOptions::trainable)): what an optimiser updates.
    pub fn vars(&self, name: &str) -> Result<BTreeMap<String, Var>> {
        Ok(self.adapter(name)?.store().vars.clone())
    }

    /// The gradient of every tensor of adapter `name` in `grads` (what `loss.backward()`
    /// returned), keyed by PEFT's names (`base_model.model.<path>.lora_A.weight`), float32 in
    /// the tensor's shape; zeros for a tensor the loss does not depend on, and for a base layer
    /// the file carries (frozen, as in PEFT).
    pub fn gradients(&self, name: &str, grads: &GradStore) -> Result<BTreeMap<String, Tensor>> {
        let adapter = self.adapter(name)?;
        if !adapter.is_trainable() {
            return Err(Error::Invalid(format!(
                "adapter {name:?} is frozen: read it with LoraOptions::trainable() for gradients"
            )));
        }
        // Every tensor of the file: a frozen one (a base layer it carries) gets zeros.
        let store = adapter.store();
        store
            .tensors
            .iter()
            .map(|(key, tensor)| {
                let g = match store.vars.get(key).and_then(|v| grads.get(v.as_tensor())) {
                    Some(g) => g.to_dtype(DType::F32)?,
                    None => tensor.zeros_like()?.to_dtype(DType::F32)?,
                };
                Ok((key.clone(), g))
            })
            .collect()
    }

    /// Writes adapter `name` to `dir` as PEFT saves it: `adapter_config.json` (the config
    /// read) and `adapter_model.safetensors` (its current values, float32, PEFT's keys).
    pub fn save_pretrained(&self, name: &str, dir: impl AsRef<Path>) -> Result<()> {
        let adapter = self.adapter(name)?;
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let config_file = dir.join("adapter_config.json");
        let mut json = adapter.config.json.clone();
        json.entry("peft_type").or_insert_with(|| "LORA".into());
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| Error::config(&config_file, "", e.to_string()))?;
        std::fs::write(&config_file, text).map_err(|e| Error::io(&config_file, e))?;
        let weights_file = dir.join("adapter_model.safetensors");
        let tensors = adapter
            .store()
            .tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_dtype(DType::F32)?.contiguous()?)))
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        candle_core::safetensors::save(&tensors, &weights_file)
            .map_err(|e| Error::tensor(&weights_file, "(file)", e.to_string()))?;
        Ok(())
    }
}
