#![warn(missing_docs)]
//! GGUF files as patchwork checkpoints: the files CPU users have.
//!
//! - [`GgufCheckpoint::open`] reads a `.gguf` file (memory-mapped, its header and every
//!   tensor's byte range checked before anything is read) of a supported architecture
//!   ([`Arch`]: `llama`, `qwen2`, `qwen2moe`, `qwen3`, `qwen3moe`; any other is an error naming
//!   it), and makes the `config.json` transformers would have from its metadata
//!   ([`GgufCheckpoint::config`]).
//! - [`GgufCheckpoint::source`] serves the model's parameters by transformers' names
//!   (`blk.N.attn_q.weight` is `model.layers.N.self_attn.q_proj.weight`; an expert bank's
//!   `ffn_gate_exps` and `ffn_up_exps` make `mlp.experts.gate_up_proj`; a file without
//!   `output.weight` has a tied head), with llama's q/k rows, which llama.cpp's converter
//!   stores permuted for its rope, put back in transformers' order. A module asking for floats
//!   gets the tensor dequantized; a module computing on quantized blocks gets them as stored
//!   (`Weights::get_packed`), so the weights stay packed.
//! - llama.cpp's `rope_freqs` tensor (Llama 3's frequency scaling, baked into per-frequency
//!   factors) becomes the config's `rope_freq_factors`, which the models apply as llama.cpp
//!   does. (transformers' GGUF loader ignores it.)

mod arch;
mod file;
mod names;
mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use patch_checkpoint::Result;
use patch_checkpoint::files::malformed;
use serde_json::{Value, json};

pub use arch::{Arch, config};
pub use file::{GgufFile, TensorMeta};
pub use names::{gguf_name, hf_name};
pub use source::GgufSource;

/// A GGUF file opened as a checkpoint: the file, its architecture and the config made from it.
#[derive(Debug, Clone)]
pub struct GgufCheckpoint {
    file: Arc<GgufFile>,
    arch: Arch,
    config: Value,
}

impl GgufCheckpoint {
    /// Opens the GGUF file `path` and makes its config (see the crate docs).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = GgufFile::open(path.as_ref())?;
        let arch = Arch::of(&file)?;
        let mut config = arch::config(&file, arch)?;
        if let Some(factors) = rope_factors(&file)? {
            config["rope_freq_factors"] = factors;
        }
        Ok(Self {
            file: Arc::new(file),
            arch,
            config,
        })
    }

    /// The file.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// Its architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The `config.json` transformers would have for it.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// The source serving its parameters (see [`GgufSource`]).
    pub fn source(&self) -> Result<GgufSource> {
        let count = |key: &str| -> Result<usize> {
            let n = self
                .config
                .get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    malformed(
                        self.file.path(),
                        format!("no {key} in the config made from it"),
                    )
                })?;
            usize::try_from(n).map_err(|_| malformed(self.file.path(), format!("{key} = {n}")))
        };
        Ok(GgufSource::new(
            self.file.clone(),
            self.arch,
            count("num_attention_heads")?,
            count("num_key_value_heads")?,
        ))
    }

    /// Every parameter the file holds, by transformers' name, with its ggml type and shape
    /// (what `inspect` lists).
    pub fn tensors(&self) -> Vec<(String, String, Vec<usize>)> {
        let mut out: Vec<(String, String, Vec<usize>)> = self
            .file
            .tensors()
            .iter()
            .map(|(gguf, meta)| {
                let name = hf_name(gguf).unwrap_or_else(|| gguf.clone());
                (name, format!("{:?}", meta.dtype), meta.dims.clone())
            })
            .collect();
        out.sort();
        out
    }
}

/// The frequency factors of `rope_freqs.weight`, if the file has them, as a JSON array.
fn rope_factors(file: &GgufFile) -> Result<Option<Value>> {
    if file.tensor("rope_freqs.weight").is_none() {
        return Ok(None);
    }
    let q = file.qtensor("rope_freqs.weight", None)?;
    let factors: Vec<f32> = q
        .dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1())
        .map_err(|e| file.error(format!("tensor \"rope_freqs.weight\": {e}")))?;
    if let Some(bad) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
        return Err(file.error(format!(
            "tensor \"rope_freqs.weight\" holds {bad}: frequency factors must be positive"
        )));
    }
    Ok(Some(json!(factors)))
}

/// The GGUF file a model name designates: `path` itself when it is a file, else the one
/// `.gguf` file in the folder `path` (or the one named `gguf_file` in it, transformers'
/// `gguf_file`). `None` when `path` is a folder holding no `.gguf` file and none was named.
pub fn find(path: &Path, gguf_file: Option<&str>) -> Result<Option<PathBuf>> {
    if path.is_file() {
        return Ok(Some(path.to_path_buf()));
    }
    if let Some(name) = gguf_file {
        let p = path.join(name);
        if !p.is_file() {
            return Err(malformed(
                path,
                format!("no GGUF file {name:?} in this folder"),
            ));
        }
        return Ok(Some(p));
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return Ok(None);
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(malformed(
            path,
            format!(
                "holds {} GGUF files ({}): name one (--gguf-file NAME)",
                found.len(),
                found
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
