//! A local HF checkpoint folder: its config, its safetensors files (one, or the shards an
//! index lists, checked against it) and their headers. The load session over it is
//! [`crate::session`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;

use crate::files::{malformed, read_json};
use crate::pattern::natural_cmp;
use crate::plan::{Plan, StoredKey};
use crate::safetensors_io::{SafetensorsFile, candle_dtype};
use crate::{CheckpointSource, Result, Transform};

/// An opened checkpoint folder: `config.json` plus `model.safetensors`, or shards listed in
/// `model.safetensors.index.json`. The files are memory-mapped and their headers parsed;
/// no tensor data is read until a [`CheckpointSource`] serves a request.
///
/// ```no_run
/// use std::sync::Arc;
/// use candle_core::{DType, Device};
/// use patch_checkpoint::{Checkpoint, Weights};
///
/// # fn main() -> patch_checkpoint::Result<()> {
/// let ckpt = Checkpoint::open("path/to/qwen2-moe")?;
/// let source = Arc::new(ckpt.source(ckpt.registered_transforms()?)?);
/// let weights = Weights::from_arc(source.clone(), DType::F32, &Device::Cpu);
/// // ... build the model from `weights` ...
/// weights.finish()?; // one error listing every missing, unexpected or mis-shaped tensor
/// println!("{}", source.report());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    config: serde_json::Value,
    files: Arc<Vec<SafetensorsFile>>,
}

/// The shards an index lists, opened and checked against it: every key it lists is in the
/// shard it names, and every key a shard stores is listed for that shard.
fn open_shards(dir: &Path, index: &Path) -> Result<Vec<SafetensorsFile>> {
    let value = read_json(index)?;
    let shards = index_shards(index, &value)?;
    let files = shards
        .keys()
        .map(|name| SafetensorsFile::open(&dir.join(name)))
        .collect::<Result<Vec<_>>>()?;
    let stored: Vec<HashSet<&str>> = files
        .iter()
        .map(|f| f.tensors.iter().map(|(k, _)| k.as_str()).collect())
        .collect();
    // A key listed in the wrong shard is reported as such, before the shard that holds it
    // reports it unlisted.
    for ((name, keys), stored) in shards.iter().zip(&stored) {
        let mut absent: Vec<&&str> = keys.iter().filter(|k| !stored.contains(**k)).collect();
        if !absent.is_empty() {
            absent.sort_by(|a, b| natural_cmp(a, b));
            return Err(malformed(
                index,
                format!(
                    "lists {} in {name}, which does not contain {}",
                    listing(&absent),
                    if absent.len() == 1 { "it" } else { "them" }
                ),
            ));
        }
    }
    for (((_, keys), stored), f) in shards.iter().zip(&stored).zip(&files) {
        let mut unlisted: Vec<&&str> = stored.iter().filter(|k| !keys.contains(**k)).collect();
        if !unlisted.is_empty() {
            unlisted.sort_by(|a, b| natural_cmp(a, b));
            return Err(malformed(
                &f.path,
                format!(
                    "stores {}, which {} does not list for this shard",
                    listing(&unlisted),
                    index.display()
                ),
            ));
        }
    }
    drop(stored);
    Ok(files)
}

/// The keys an index's `weight_map` lists per shard file, checked: every file a plain name in
/// the index's folder.
pub(crate) fn index_shards<'a>(
    index: &Path,
    value: &'a serde_json::Value,
) -> Result<BTreeMap<&'a str, HashSet<&'a str>>> {
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| malformed(index, "no \"weight_map\" object"))?;
    let mut shards: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for (key, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| malformed(index, format!("weight_map[{key:?}] is not a file name")))?;
        let plain = Path::new(file)
            .file_name()
            .is_some_and(|name| name == std::ffi::OsStr::new(file));
        if !plain || file == ".." || file == "." {
            return Err(malformed(
                index,
                format!("weight_map[{key:?}] = {file:?} is not a file in this folder"),
            ));
        }
        shards.entry(file).or_default().insert(key);
    }
    Ok(shards)
}

/// `"a", "b" and 3 more`: keys for a message, at most five.
fn listing(keys: &[&&str]) -> String {
    let shown: Vec<String> = keys.iter().take(5).map(|k| format!("{k:?}")).collect();
    if keys.len() > 5 {
        format!("{} and {} more", shown.join(", "), keys.len() - 5)
    } else {
        shown.join(", ")
    }
}

impl Checkpoint {
    /// Opens `dir`: reads `config.json`, maps the safetensors files (regular files only, headers
    /// checked) and checks the index (every key it lists is in the shard it names, every key a
    /// shard stores is listed for it, no key is stored twice).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config = read_json(&dir.join("config.json"))?;
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.exists() {
            vec![SafetensorsFile::open(&single)?]
        } else if index.exists() {
            open_shards(&dir, &index)?
        } else {
            return Err(malformed(
                &dir,
                "no model.safetensors or model.safetensors.index.json in this folder",
            ));
        };
        let mut seen: HashMap<&str, &Path> = HashMap::new();
        for f in &files {
            for (k, _) in &f.tensors {
                if let Some(other) = seen.insert(k, &f.path) {
                    return Err(malformed(
                        &f.path,
                        format!("tensor {k:?} is also stored in {}", other.display()),
                    ));
                }
            }
        }
        Ok(Self {
            dir,
            config,
            files: Arc::new(files),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// The safetensors files, in the order they were opened.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Every stored tensor: (key, dtype, shape), keys in natural order (`layers.2` before
    /// `layers.10`). A dtype candle cannot hold is reported as `None`.
    pub fn tensors(&self) -> Vec<(String, Option<DType>, Vec<usize>)> {
        let mut v: Vec<_> = self
            .files
            .iter()
            .flat_map(|f| f.tensors.iter())
            .map(|(k, m)| (k.clone(), candle_dtype(m.dtype), m.shape.clone()))
            .collect();
        v.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        v
    }

    /// The transforms the global registry holds for this checkpoint's config (a class name in
    /// `architectures` beats `model_type`), or none.
    pub fn registered_transforms(&self) -> Result<Vec<Transform>> {
        Ok(
            crate::registry::checkpoint_conversion_mapping_for(&self.config)?
                .map(|(_, t)| t)
                .unwrap_or_default(),
        )
    }

    /// A load session over this checkpoint, converting with `transforms` (the registry's for
    /// this model; replacements add theirs through the requests' scopes).
    pub fn source(&self, transforms: Vec<Transform>) -> Result<CheckpointSource> {
        let keys = self
            .files
            .iter()
            .enumerate()
            .flat_map(|(file, f)| {
                f.tensors.iter().map(move |(k, meta)| StoredKey {
                    original: k.clone(),
                    file,
                    meta: meta.clone(),
                })
            })
            .collect();
        let plan = Plan::new(keys, &transforms)?;
        Ok(CheckpointSource::new(
            self.dir.clone(),
            self.files.clone(),
            plan,
        ))
    }
}
