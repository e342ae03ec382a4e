//! `save_pretrained`: a built model's weights back in the checkpoint's own layout.
//!
//! Every recorded parameter is traced back to checkpoint keys:
//!
//! - a tensor loaded from a checkpoint has an [`Origin`](crate::Origin): it is written under
//!   the exact key it was read from, in the file's dtype, and a converted tensor goes back
//!   through the reverse of the steps that made it, with the sizes seen at load (so unequal
//!   concatenations such as GQA q/k/v split back exactly);
//! - a tensor with no checkpoint behind it (a model built from its config) is matched against
//!   the target patterns of the transforms that would apply to it (its replacement scopes,
//!   innermost first, then the registry's), planned backwards from its shape, and its name is
//!   un-renamed (see [`WeightRenaming`](crate::WeightRenaming) for when that is possible).
//!
//! Files are written one tensor at a time; a conversion unit's outputs are computed when the
//! first of them is written and kept only until the rest are.

mod plan;
mod unit;
mod without_origin;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::files::{PendingFile, PendingFiles, check_output, io_error};
use crate::pattern::natural_cmp;
use crate::safetensors_write::{OutTensor, write_file};
use crate::{Error, Replicas, Result, Transform, Weights};

use plan::plan_units;
use unit::run_unit;

/// How [`save_pretrained`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaveOptions {
    /// Largest shard in bytes (default 5 GB, transformers' historical default): above it the
    /// weights are split into `model-0000i-of-0000n.safetensors` files with a
    /// `model.safetensors.index.json`; a single tensor larger than this gets a shard of its own.
    pub max_shard_size: u64,
    /// `None`: every tensor in the dtype it was loaded from (tensors without a checkpoint in
    /// their own dtype), so load-then-save is exact. `Some(d)`: every float tensor in `d`.
    pub dtype: Option<DType>,
    /// Told the bytes written so far after each tensor ([`crate::Stage::Save`]).
    pub progress: Option<crate::Progress>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            max_shard_size: 5_000_000_000,
            dtype: None,
            progress: None,
        }
    }
}

/// What [`save_pretrained`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaveReport {
    /// The files written (config, weight files, index), in writing order.
    pub files: Vec<PathBuf>,
    /// Number of tensors written.
    pub tensors: usize,
    /// Sum of the tensors' sizes in bytes (the index's `metadata.total_size`).
    pub total_size: u64,
}

/// An [`Error::Save`] about `name`.
fn save_err(name: &str, message: impl Into<String>) -> Error {
    Error::Save {
        name: name.to_string(),
        message: message.into(),
    }
}

/// Writes `config` and the weights recorded in `weights` to `dir` in the checkpoint layout.
///
/// `transforms` are the registry's transforms for this model (what it was, or would be, loaded
/// with); they are only used for tensors that did not come from a checkpoint. Tied aliases
/// ([`Weights::tie`]) are not written. Existing weight files in `dir` (`model.safetensors`,
/// shards and index) are replaced; `dir` must not be the folder the weights are read from.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use candle_core::{DType, Device};
/// # use patch_checkpoint::{Checkpoint, SaveOptions, Weights, save_pretrained};
/// # fn main() -> patch_checkpoint::Result<()> {
/// let ckpt = Checkpoint::open("in")?;
/// let transforms = ckpt.registered_transforms()?;
/// let weights = Weights::from_arc(Arc::new(ckpt.source(transforms.clone())?), DType::F32, &Device::Cpu);
/// // ... build the model ...
/// weights.finish()?;
/// save_pretrained("out", ckpt.config(), &weights, &transforms, &SaveOptions::default())?;
/// # Ok(()) }
/// ```
pub fn save_pretrained(
    dir: impl AsRef<Path>,
    config: &serde_json::Value,
    weights: &Weights,
    transforms: &[Transform],
    options: &SaveOptions,
) -> Result<SaveReport> {
    let dir = dir.as_ref();
    if let Some(src) = weights.source().checkpoint_dir()
        && let (Ok(a), Ok(b)) = (src.canonicalize(), dir.canonicalize())
        && a == b
    {
        return Err(Error::Output {
            path: dir.display().to_string(),
            message: "is the checkpoint the weights are read from (memory-mapped): save to another folder".into(),
        });
    }
    let units = plan_units(weights, transforms, options)?;

    // Where each checkpoint key comes from; keys in natural order.
    let mut keys: Vec<(usize, usize)> = Vec::new();
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (u, unit) in units.iter().enumerate() {
        for (o, out) in unit.outputs.iter().enumerate() {
            if let Some(other) = seen.insert(&out.name, &unit.what) {
                return Err(save_err(
                    &out.name,
                    format!(
                        "two tensors would be saved under this key (from {other} and from {})",
                        unit.what
                    ),
                ));
            }
            keys.push((u, o));
        }
    }
    keys.sort_by(|a, b| natural_cmp(&units[a.0].outputs[a.1].name, &units[b.0].outputs[b.1].name));

    // Shards, greedily in key order.
    let mut shards: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut current = 0u64;
    for &(u, o) in &keys {
        let n = units[u].outputs[o].nbytes()?;
        match shards.last_mut() {
            Some(shard) if current.saturating_add(n) <= options.max_shard_size => {
                shard.push((u, o));
                current += n;
            }
            _ => {
                shards.push(vec![(u, o)]);
                current = n;
            }
        }
    }
    if shards.is_empty() {
        shards.push(Vec::new());
    }
    let n = shards.len();
    let names: Vec<String> = if n == 1 {
        vec!["model.safetensors".to_string()]
    } else {
        (1..=n)
            .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
            .collect()
    };
    let config_path = dir.join("config.json");
    let index_path = dir.join("model.safetensors.index.json");

    // Every target is checked before anything is written; everything is written under
    // temporary names, then renamed into place, the weights first and the config last.
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "cannot create the folder", e))?;
    for target in names
        .iter()
        .map(|name| dir.join(name))
        .chain([index_path.clone(), config_path.clone()])
    {
        check_output(&target, &[])?;
    }
    let mut pending = PendingFiles::new();
    let params = weights.params();
    let param = |name: &str| params.fetch(name);
    let mut cache: HashMap<usize, Vec<Option<Tensor>>> = HashMap::new();
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0u64;
    let mut written = 0u64;
    let all_bytes = keys.iter().try_fold(0u64, |acc, &(u, o)| {
        Ok::<u64, Error>(acc.saturating_add(units[u].outputs[o].nbytes()?))
    })?;
    let _span = tracing::info_span!("save", dir = %dir.display(), bytes = all_bytes).entered();
    for (shard, name) in shards.iter().zip(&names) {
        let out: Vec<OutTensor> = shard
            .iter()
            .map(|&(u, o)| units[u].outputs[o].clone())
            .collect();
        let path = dir.join(name);
        let mut next = shard.iter();
        let file = write_file(&path, &out, &[], |t| {
            let &(u, o) = next
                .next()
                .ok_or_else(|| save_err(&t.name, "internal: shard order"))?;
            if let std::collections::hash_map::Entry::Vacant(e) = cache.entry(u) {
                e.insert(run_unit(&units[u], &param)?);
            }
            let tensor = cache
                .get_mut(&u)
                .and_then(|v| v.get_mut(o))
                .and_then(Option::take)
                .ok_or_else(|| save_err(&t.name, "internal: output taken twice"))?;
            if cache.get(&u).is_some_and(|v| v.iter().all(Option::is_none)) {
                cache.remove(&u);
            }
            let tensor = if tensor.dtype() == t.dtype {
                tensor
            } else {
                tensor.to_dtype(t.dtype)?
            };
            written = written.saturating_add(t.nbytes()?);
            if let Some(p) = &options.progress {
                p.report(crate::Stage::Save, written, all_bytes);
            }
            Ok(tensor)
        })?;
        pending.push(file);
        for t in &out {
            weight_map.insert(t.name.clone(), name.clone());
            total_size = total_size.saturating_add(t.nbytes()?);
        }
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total_size },
            "weight_map": weight_map,
        });
        pending.push(json_file(&index_path, &index)?);
    }
    pending.push(json_file(&config_path, config)?);
    let files = pending.commit()?;
    remove_stale(dir, &files)?;
    Ok(SaveReport {
        files,
        tensors: keys.len(),
        total_size,
    })
}

/// Maps a value per recorded parameter to the checkpoint's keys and layout, by the same
/// reverse steps [`save_pretrained`] writes with (stacked experts split per expert, fused q/k/v
/// split into three, renamings undone; tied aliases left out): `value(name, tensor)` gives the
/// value for the parameter `name` recorded as `tensor`, with its shape.
///
/// Gradients by checkpoint key are this map applied to each parameter's gradient. A parameter
/// split across processes ([`Weights::get_shard`]) is given as this process's slice, and the
/// values of every process's slices are gathered into the full tensor, the values of replicated
/// slices added up as gradients are: then the call is collective (every process makes it).
pub fn to_checkpoint_layout(
    weights: &Weights,
    transforms: &[Transform],
    mut value: impl FnMut(&str, &Tensor) -> Result<Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let units = plan_units(weights, transforms, &SaveOptions::default())?;
    let mut values: HashMap<String, Tensor> = HashMap::new();
    let params = weights.params();
    for (name, tensor) in params.entries().into_iter().map(|(n, p)| (n, p.tensor)) {
        // A sharded parameter: the value of this process's slice, then the full tensor from
        // every process's (gradients of a replicated slice add up).
        let (tensor, shard) = match (params.shard(&name), params.get(&name)) {
            (Some(shard), Some(local)) => (local, Some(shard)),
            _ => (tensor, None),
        };
        let v = value(&name, &tensor)?;
        if v.dims() != tensor.dims() {
            return Err(save_err(
                &name,
                format!(
                    "the value given has shape {:?}, the parameter {:?}",
                    v.dims(),
                    tensor.dims()
                ),
            ));
        }
        let v = match shard {
            Some(shard) => shard.gather(&v, Replicas::Summed)?,
            None => v,
        };
        values.insert(name, v);
    }
    let mut out = BTreeMap::new();
    for unit in &units {
        let value_of = |name: &str| Ok(values.get(name).cloned());
        for (t, output) in unit.outputs.iter().zip(run_unit(unit, &value_of)?) {
            let tensor = output.ok_or_else(|| save_err(&t.name, "internal: output missing"))?;
            if out.insert(t.name.clone(), tensor).is_some() {
                return Err(save_err(
                    &t.name,
                    "two parameters map to this checkpoint key",
                ));
            }
        }
    }
    Ok(out)
}

/// A pretty-printed JSON file, written under a temporary name.
fn json_file(path: &Path, value: &serde_json::Value) -> Result<PendingFile> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| save_err(&path.display().to_string(), e.to_string()))?;
    let mut file = PendingFile::create(path, &[])?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    Ok(file)
}

/// Removes weight files of an earlier save that this one did not write.
fn remove_stale(dir: &Path, written: &[PathBuf]) -> Result<()> {
    let is_shard = |name: &str| {
        name.strip_prefix("model-")
            .and_then(|rest| rest.strip_suffix(".safetensors"))
            .and_then(|rest| rest.split_once("-of-"))
            .is_some_and(|(a, b)| {
                [a, b]
                    .iter()
                    .all(|p| p.len() == 5 && p.bytes().all(|c| c.is_ascii_digit()))
            })
    };
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, "cannot list", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, "cannot list", e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name == "model.safetensors"
            || name == "model.safetensors.index.json"
            || is_shard(&name);
        if ours && !written.contains(&entry.path()) {
            std::fs::remove_file(entry.path())
                .map_err(|e| io_error(&entry.path(), "cannot remove a stale weight file", e))?;
        }
    }
    Ok(())
}
