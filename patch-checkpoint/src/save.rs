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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::convert::CompiledConverter;
use crate::convert::ListSide;
use crate::files::{PendingFile, PendingFiles, check_output, io_error};
use crate::ops::{Shapes, Slot, Step, run_steps};
use crate::origin::OriginKind;
use crate::pattern::natural_cmp;
use crate::plan::under;
use crate::rename::CompiledRenaming;
use crate::safetensors_io::{OutTensor, write_file};
use crate::{Error, Param, Result, Transform, Weights};

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

/// One group of parameters that becomes one group of checkpoint keys.
struct SaveUnit {
    /// Parameter names, flattened in the order of `stage`.
    inputs: Vec<String>,
    /// The structure and shapes of the parameters (the forward chain's output stage).
    stage: Shapes,
    /// Steps from the parameters to the checkpoint tensors.
    steps: Vec<Step>,
    /// The checkpoint tensors, flattened in output order.
    outputs: Vec<OutTensor>,
    /// For error messages.
    what: String,
}

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
    let params: HashMap<String, Tensor> = weights.params().snapshot().into_iter().collect();
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
                e.insert(run_unit(&units[u], &params)?);
            }
            let slot = cache
                .get_mut(&u)
                .and_then(|v| v.get_mut(o))
                .and_then(Option::take)
                .ok_or_else(|| save_err(&t.name, "internal: output taken twice"))?;
            if cache.get(&u).is_some_and(|v| v.iter().all(Option::is_none)) {
                cache.remove(&u);
            }
            let slot = if slot.dtype() == t.dtype {
                slot
            } else {
                slot.to_dtype(t.dtype)?
            };
            written = written.saturating_add(t.nbytes()?);
            if let Some(p) = &options.progress {
                p.report(crate::Stage::Save, written, all_bytes);
            }
            Ok(slot)
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
/// Gradients by checkpoint key are this map applied to each parameter's gradient.
pub fn to_checkpoint_layout(
    weights: &Weights,
    transforms: &[Transform],
    mut value: impl FnMut(&str, &Tensor) -> Result<Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let units = plan_units(weights, transforms, &SaveOptions::default())?;
    let mut values: HashMap<String, Tensor> = HashMap::new();
    for (name, tensor) in weights.params().snapshot() {
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
        values.insert(name, v);
    }
    let mut out = BTreeMap::new();
    for unit in &units {
        for (t, slot) in unit.outputs.iter().zip(run_unit(unit, &values)?) {
            let tensor = slot.ok_or_else(|| save_err(&t.name, "internal: output missing"))?;
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

/// Runs a save unit: its checkpoint tensors, in output order.
fn run_unit(unit: &SaveUnit, params: &HashMap<String, Tensor>) -> Result<Vec<Option<Tensor>>> {
    let mut inputs = unit.inputs.iter();
    let stage = unit
        .stage
        .iter()
        .map(|slot| {
            slot.as_ref().map(|shape| {
                let name = inputs
                    .next()
                    .ok_or_else(|| save_err(&unit.what, "internal: input count"))?;
                let t = params.get(name).ok_or_else(|| {
                    save_err(name, "it is no longer recorded in the parameter store")
                })?;
                if t.dims() != shape.as_slice() {
                    return Err(save_err(
                        name,
                        format!(
                            "it has shape {:?}, but it was loaded as {shape:?} ({})",
                            t.dims(),
                            unit.what
                        ),
                    ));
                }
                Ok(t.clone())
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let outputs = run_steps(&unit.steps, stage)?;
    Ok(outputs
        .into_iter()
        .flat_map(Slot::into_items)
        .map(Some)
        .collect())
}

fn out_dtype(options: &SaveOptions, own: DType) -> DType {
    match options.dtype {
        Some(d) if own.is_float() && d.is_float() => d,
        _ => own,
    }
}

/// Compiled transforms of one scope (or the registry).
struct Layer {
    prefix: String,
    renamings: Vec<CompiledRenaming>,
    converters: Vec<usize>,
}

fn compile_layer(
    convs: &mut Vec<(CompiledConverter, String)>,
    prefix: &str,
    owner: &str,
    ts: &[Transform],
) -> Result<Layer> {
    let mut layer = Layer {
        prefix: prefix.to_string(),
        renamings: Vec::new(),
        converters: Vec::new(),
    };
    for t in ts {
        match t {
            Transform::Renaming(r) => layer.renamings.push(CompiledRenaming::new(r)?),
            Transform::Converter(c) => {
                layer.converters.push(convs.len());
                convs.push((CompiledConverter::new(c)?, owner.to_string()));
            }
        }
    }
    Ok(layer)
}

/// Groups every recorded parameter into save units.
fn plan_units(
    weights: &Weights,
    transforms: &[Transform],
    options: &SaveOptions,
) -> Result<Vec<SaveUnit>> {
    let entries = weights.params().entries();
    let ties = weights.params().ties();
    let shapes: HashMap<&str, &Param> = entries.iter().map(|(n, p)| (n.as_str(), p)).collect();
    let mut units = Vec::new();
    let mut done_units: Vec<*const crate::origin::UnitOrigin> = Vec::new();
    let mut pending: Vec<(&str, &Param)> = Vec::new();
    for (name, p) in &entries {
        if ties.contains_key(name) {
            continue;
        }
        match weights.source().origin(name).map(|o| o.0) {
            Some(OriginKind::Raw { key, dtype }) => units.push(SaveUnit {
                inputs: vec![name.clone()],
                stage: vec![Slot::One(p.tensor.dims().to_vec())],
                steps: Vec::new(),
                outputs: vec![OutTensor {
                    name: key.clone(),
                    dtype: out_dtype(options, dtype),
                    shape: p.tensor.dims().to_vec(),
                }],
                what: format!("checkpoint key {key:?}"),
            }),
            Some(OriginKind::Unit { unit, .. }) => {
                let ptr = Arc::as_ptr(&unit);
                if done_units.contains(&ptr) {
                    continue;
                }
                done_units.push(ptr);
                for t in &unit.targets {
                    if !shapes.contains_key(t.as_str()) {
                        return Err(save_err(
                            name,
                            format!(
                                "{} made it together with {t:?}, which the model never asked for, so the checkpoint tensors cannot be rebuilt",
                                unit.description
                            ),
                        ));
                    }
                }
                let stage0 = &unit.shapes.stages[0];
                let outputs = unit
                    .sources
                    .iter()
                    .zip(stage0)
                    .flat_map(|(keys, shapes)| keys.items().into_iter().zip(shapes.items()))
                    .map(|((key, dtype), shape)| OutTensor {
                        name: key.clone(),
                        dtype: out_dtype(options, *dtype),
                        shape: shape.clone(),
                    })
                    .collect();
                units.push(SaveUnit {
                    inputs: unit.targets.clone(),
                    stage: unit.shapes.outputs().clone(),
                    steps: unit.shapes.reverse_steps(),
                    outputs,
                    what: unit.description.clone(),
                });
            }
            Some(OriginKind::Placeholder { problem }) => {
                return Err(save_err(
                    name,
                    format!(
                        "it is a placeholder for a tensor the checkpoint could not provide ({problem}); Weights::finish reports every such problem"
                    ),
                ));
            }
            None => pending.push((name.as_str(), p)),
        }
    }
    if !pending.is_empty() {
        units.extend(plan_without_origin(&pending, transforms, options)?);
    }
    Ok(units)
}

/// Save units for parameters that did not come from a checkpoint: matched against the target
/// patterns of the transforms that would have produced them.
fn plan_without_origin(
    pending: &[(&str, &Param)],
    transforms: &[Transform],
    options: &SaveOptions,
) -> Result<Vec<SaveUnit>> {
    let mut convs: Vec<(CompiledConverter, String)> = Vec::new();
    let registry = compile_layer(&mut convs, "", "registry", transforms)?;
    let mut scope_layers: Vec<(*const [Transform], Layer)> = Vec::new();
    let mut param_layers: Vec<Vec<usize>> = Vec::with_capacity(pending.len());
    for (_, p) in pending {
        let mut ls = Vec::with_capacity(p.scopes.len());
        for s in p.scopes.iter() {
            let ptr = Arc::as_ptr(&s.transforms);
            let found = scope_layers
                .iter()
                .position(|(q, layer)| std::ptr::addr_eq(*q, ptr) && layer.prefix == s.prefix);
            let i = match found {
                Some(i) => i,
                None => {
                    let owner = format!("{} at {:?}", s.owner, s.prefix);
                    let layer = compile_layer(&mut convs, &s.prefix, &owner, &s.transforms)?;
                    scope_layers.push((ptr, layer));
                    scope_layers.len() - 1
                }
            };
            ls.push(i);
        }
        param_layers.push(ls);
    }

    type GroupKey = (usize, String, String, Vec<usize>);
    struct Group<'a> {
        members: Vec<(usize, Option<usize>, &'a str, &'a Param)>,
        layers: Vec<usize>,
    }
    let mut groups: Vec<(GroupKey, Group)> = Vec::new();
    let mut direct: Vec<(&str, &Param, Vec<usize>)> = Vec::new();
    for (&(name, p), layers) in pending.iter().zip(param_layers) {
        let mut order: Vec<usize> = Vec::new();
        for &l in layers.iter().rev() {
            if under(name, &scope_layers[l].1.prefix) {
                order.extend(&scope_layers[l].1.converters);
            }
        }
        order.extend(&registry.converters);
        let mut claimed = false;
        'convs: for c in order {
            let conv = &convs[c].0;
            for (j, pat) in conv.targets.iter().enumerate() {
                if let Some(m) = pat.find(name) {
                    let mut caps = m.captures.clone();
                    let list_index = if conv.list == ListSide::Targets {
                        caps.pop()
                    } else {
                        None
                    };
                    let key = (c, m.prefix, m.suffix, caps);
                    let g = match groups.iter().position(|(k, _)| *k == key) {
                        Some(g) => g,
                        None => {
                            groups.push((
                                key,
                                Group {
                                    members: Vec::new(),
                                    layers: layers.clone(),
                                },
                            ));
                            groups.len() - 1
                        }
                    };
                    groups[g].1.members.push((j, list_index, name, p));
                    claimed = true;
                    break 'convs;
                }
            }
        }
        if !claimed {
            direct.push((name, p, layers));
        }
    }

    let unrename = |name: &str, layers: &[usize]| -> Result<String> {
        let mut n = name.to_string();
        for &l in layers.iter().rev() {
            let layer = &scope_layers[l].1;
            if under(&n, &layer.prefix) {
                for r in layer.renamings.iter().rev() {
                    n = r.reverse(&n).map_err(|m| save_err(name, m))?;
                }
            }
        }
        for r in registry.renamings.iter().rev() {
            n = r.reverse(&n).map_err(|m| save_err(name, m))?;
        }
        Ok(n)
    };

    let mut units = Vec::new();
    for (name, p, layers) in direct {
        let key = unrename(name, &layers)?;
        units.push(SaveUnit {
            inputs: vec![name.to_string()],
            stage: vec![Slot::One(p.tensor.dims().to_vec())],
            steps: Vec::new(),
            outputs: vec![OutTensor {
                name: key,
                dtype: out_dtype(options, p.tensor.dtype()),
                shape: p.tensor.dims().to_vec(),
            }],
            what: format!("parameter {name:?}"),
        });
    }
    for ((c, prefix, suffix, caps), group) in groups {
        let (conv, owner) = &convs[c];
        let what = format!("{} ({owner})", conv.describe());
        let first_name = group.members.first().map(|m| m.2).unwrap_or_default();
        let err = |m: String| save_err(first_name, format!("{what}: {m}"));
        // The parameters per target slot, lists by index.
        let mut slots: Vec<Vec<(usize, &str, &Param)>> = vec![Vec::new(); conv.targets.len()];
        for (j, idx, name, p) in &group.members {
            slots[*j].push((idx.unwrap_or(0), name, p));
        }
        let mut stage: Shapes = Vec::new();
        let mut inputs = Vec::new();
        let mut dtype = None;
        for (j, mut items) in slots.into_iter().enumerate() {
            items.sort_by_key(|(i, _, _)| *i);
            if items.is_empty() {
                return Err(err(format!(
                    "the model has no tensor for target {:?} here, so the checkpoint tensors cannot be rebuilt",
                    format!("{prefix}{}{suffix}", conv.targets[j].fill(&caps))
                )));
            }
            if conv.list == ListSide::Targets {
                if items.iter().enumerate().any(|(pos, (i, _, _))| pos != *i) {
                    return Err(err(format!(
                        "module list indices {:?} are not 0..n",
                        items.iter().map(|(i, _, _)| *i).collect::<Vec<_>>()
                    )));
                }
                stage.push(Slot::Many(
                    items
                        .iter()
                        .map(|(_, _, p)| p.tensor.dims().to_vec())
                        .collect(),
                ));
            } else {
                stage.push(Slot::One(items[0].2.tensor.dims().to_vec()));
            }
            for (_, name, p) in &items {
                dtype.get_or_insert(p.tensor.dtype());
                inputs.push(name.to_string());
            }
        }
        let shapes = conv.plan_backward(stage.clone()).map_err(err)?;
        let dtype = out_dtype(options, dtype.unwrap_or(DType::F32));
        let mut outputs = Vec::new();
        for (i, slot) in shapes.stages[0].iter().enumerate() {
            let fill = |extra: Option<usize>| {
                let mut c = caps.clone();
                c.extend(extra);
                format!("{prefix}{}{suffix}", conv.sources[i].fill(&c))
            };
            match slot {
                Slot::One(shape) => outputs.push((fill(None), shape.clone())),
                Slot::Many(items) => {
                    for (idx, shape) in items.iter().enumerate() {
                        outputs.push((fill(Some(idx)), shape.clone()));
                    }
                }
            }
        }
        let outputs = outputs
            .into_iter()
            .map(|(name, shape)| {
                Ok(OutTensor {
                    name: unrename(&name, &group.layers)?,
                    dtype,
                    shape,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        units.push(SaveUnit {
            inputs,
            stage,
            steps: shapes.reverse_steps(),
            outputs,
            what,
        });
    }
    Ok(units)
}
