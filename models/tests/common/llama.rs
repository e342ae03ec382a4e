//! The llama-tiny fixture as the Llama tests load it.

use candle_core::{Device, Tensor};
use patch_core::PatchSet;
use patchwork_models::{AutoModelForCausalLM, CausalLM, LoadOptions};

use super::fixtures_dir;

pub fn options() -> LoadOptions {
    LoadOptions::default().with_patches(PatchSet::empty())
}

pub fn llama_dir() -> std::path::PathBuf {
    fixtures_dir().join("llama-tiny")
}

pub fn llama() -> CausalLM {
    AutoModelForCausalLM::from_pretrained(llama_dir(), &options()).unwrap()
}

pub fn tiny_config() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(llama_dir().join("config.json")).unwrap())
        .unwrap()
}

pub fn config_error(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut config = tiny_config();
    edit(&mut config);
    match AutoModelForCausalLM::from_config(&config, &options()) {
        Ok(_) => panic!("config accepted: {config}"),
        Err(e) => e.to_string(),
    }
}

pub fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(llama_dir().join("reference.safetensors"), &Device::Cpu).unwrap()
}
