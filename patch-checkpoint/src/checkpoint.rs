//! A local HF checkpoint folder and the load session that serves a model from it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use regex::Regex;

use crate::accounting::{FiredTransform, LoadReport, Problem};
use crate::files::{malformed, read_json};
use crate::ops::{Slot, run_steps};
use crate::origin::{Origin, OriginKind};
use crate::pattern::natural_cmp;
use crate::plan::{Plan, under};
use crate::safetensors_io::{SafetensorsFile, TensorMeta, candle_dtype};
use crate::{Error, Result, Transform, TransformScope, WeightRequest, WeightSource};

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
            .flat_map(|(i, f)| {
                f.tensors
                    .iter()
                    .map(move |(k, m)| (k.clone(), i, m.clone()))
            })
            .collect();
        let plan = Plan::new(keys, &transforms)?;
        let total_bytes = self
            .files
            .iter()
            .flat_map(|f| f.tensors.iter())
            .map(|(_, m)| m.len() as u64)
            .sum();
        Ok(CheckpointSource {
            dir: self.dir.clone(),
            files: self.files.clone(),
            progress: None,
            total_bytes,
            state: Mutex::new(State {
                plan,
                problems: Vec::new(),
                cache: HashMap::new(),
                origins: HashMap::new(),
                ties: Vec::new(),
                allowed: Vec::new(),
                stats: Stats::default(),
            }),
        })
    }
}

#[derive(Default)]
struct Stats {
    tensors_read: usize,
    bytes_read: u64,
    served: usize,
    units_run: usize,
    busy: Duration,
}

struct State {
    plan: Plan,
    problems: Vec<Problem>,
    /// Unit outputs produced but not yet asked for.
    cache: HashMap<String, Tensor>,
    origins: HashMap<String, Origin>,
    ties: Vec<(String, String)>,
    allowed: Vec<Regex>,
    stats: Stats,
}

/// A load session: serves a model's requests from a [`Checkpoint`], converting on the way,
/// and accounts for every tensor.
///
/// Conversion is pull-based and streams: a request for a name that a conversion unit produces
/// reads exactly that unit's keys (one layer's experts, say), converts them and returns the
/// result; a unit with several outputs keeps the ones not asked for yet only until they are
/// asked for. A name no unit produces is read from the key whose name (after renamings) it is.
/// A key claimed by a converter can still be asked for directly: a replacement that wants
/// per-expert tensors gets the per-expert keys, and the default stacking never runs for it,
/// so there is no need to unregister or overwrite the model's default mapping.
///
/// Reading copies each tensor once out of the memory map (candle's CPU storage is an owned
/// buffer, so a tensor cannot borrow the map; a float file dtype other than the compute dtype
/// is converted on the way), then releases the mapped pages, so peak memory stays close to the
/// model's own size (1.09x for a 1.4 GB Qwen2-MoE-shaped checkpoint, see
/// `examples/load_rss.rs`). Nothing is read before it is asked for.
///
/// Requests never fail for missing or mis-shaped tensors: the problem is recorded, the module
/// gets a placeholder (a broadcast zero of the asked shape, no memory), and [`Weights::finish`]
/// (or [`CheckpointSource::check`]) fails with every problem at once. Always call it.
///
/// [`Weights::finish`]: crate::Weights::finish
pub struct CheckpointSource {
    dir: PathBuf,
    files: Arc<Vec<SafetensorsFile>>,
    state: Mutex<State>,
    progress: Option<crate::Progress>,
    total_bytes: u64,
}

impl std::fmt::Debug for CheckpointSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSource")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// One tensor the plan can produce: its name, shape and stored dtype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedTensor {
    /// The name a module would ask for.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The dtype of the checkpoint key(s) it is made from.
    pub dtype: DType,
}

/// What a request needs done outside the lock.
enum Action {
    /// A unit output cached by an earlier run of its unit.
    Ready {
        tensor: Tensor,
        u: usize,
        index: usize,
    },
    Raw {
        k: usize,
        file: usize,
        meta: TensorMeta,
        original: String,
    },
    Unit {
        u: usize,
        index: usize,
        loads: Vec<Slot<(usize, String, TensorMeta)>>,
        steps: Vec<crate::ops::Step>,
    },
    Fail(Problem),
}

impl CheckpointSource {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This source, with checkpoint keys matching `pattern` (a regex, searched in the key as
    /// stored) allowed to stay unused: like transformers' `_keys_to_ignore_on_load_unexpected`,
    /// for buffers a model recomputes (`rotary_emb.inv_freq`) or a tied head stored anyway.
    pub fn allow_unused(self, pattern: &str) -> Result<Self> {
        let re = Regex::new(pattern).map_err(|e| Error::Transform {
            transform: format!("allow_unused({pattern:?})"),
            message: format!("invalid regex: {e}"),
        })?;
        self.lock().allowed.push(re);
        Ok(self)
    }

    /// This source, telling `progress` the bytes read so far after each read
    /// ([`crate::Stage::Load`], of the bytes all stored tensors hold).
    pub fn with_progress(mut self, progress: crate::Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    fn tell_progress(&self, st: &State) {
        if let Some(p) = &self.progress {
            p.report(crate::Stage::Load, st.stats.bytes_read, self.total_bytes);
        }
    }

    /// The folder this source reads.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every tensor the plan produces, as a model would ask for it: the targets of every
    /// conversion unit, then every key no unit claims, under its name after renamings (natural
    /// order). Units that cannot run are recorded as problems (so `finish` reports them).
    /// What `patchwork resave` requests.
    pub fn planned_tensors(&self) -> Vec<PlannedTensor> {
        let mut st = self.lock();
        let st = &mut *st;
        let plan = &st.plan;
        let mut out = Vec::new();
        for unit in plan.units.iter().flatten() {
            let dtype = unit
                .keys()
                .first()
                .and_then(|&k| candle_dtype(plan.keys[k].meta.dtype))
                .unwrap_or(DType::F32);
            match &unit.plan {
                Ok(_) => {
                    for (name, shape) in unit.targets.iter().zip(Plan::output_shapes(unit)) {
                        out.push(PlannedTensor {
                            name: name.clone(),
                            shape,
                            dtype,
                        })
                    }
                }
                Err(e) => st.problems.push(Problem::Conversion {
                    name: unit.targets.join(", "),
                    detail: format!("{}: {e}", plan.describe_unit(unit)),
                }),
            }
        }
        for key in &plan.keys {
            if key.unit.is_none() {
                out.push(PlannedTensor {
                    name: key.name.clone(),
                    shape: key.meta.shape.clone(),
                    dtype: candle_dtype(key.meta.dtype).unwrap_or(DType::F32),
                });
            }
        }
        out.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        out
    }

    /// What the load did so far.
    pub fn report(&self) -> LoadReport {
        let st = self.lock();
        // One line per transform and supplier: a replacement built at every layer counts once.
        let mut transforms: Vec<FiredTransform> = Vec::new();
        let fired = st
            .plan
            .rens
            .iter()
            .zip(st.plan.renamed_counts())
            .map(|(r, n)| (r.compiled.describe(), r.who, n))
            .chain(
                st.plan
                    .convs
                    .iter()
                    .map(|c| (c.compiled.describe(), c.who, c.units_run)),
            );
        for (transform, who, count) in fired.filter(|f| f.2 > 0) {
            match transforms
                .iter_mut()
                .find(|t| t.transform == transform && t.owner == who)
            {
                Some(t) => t.count += count,
                None => transforms.push(FiredTransform {
                    transform,
                    owner: who.to_string(),
                    count,
                }),
            }
        }
        LoadReport {
            checkpoint: self.dir.display().to_string(),
            tensors_read: st.stats.tensors_read,
            bytes_read: st.stats.bytes_read,
            tensors_served: st.stats.served,
            units_run: st.stats.units_run,
            transforms,
            elapsed: st.stats.busy,
        }
    }

    /// Every problem so far, plus every checkpoint tensor nobody asked for: the strict
    /// accounting [`WeightSource::finish`] turns into one error.
    pub fn problems(&self) -> Vec<Problem> {
        let st = self.lock();
        let mut problems = st.plan.problems.clone();
        problems.extend(st.problems.iter().cloned());
        let allowed = |key: &str| st.allowed.iter().any(|re| re.is_match(key));
        for (k, key) in st.plan.keys.iter().enumerate() {
            if key.consumed > 0 || allowed(&key.original) {
                continue;
            }
            if let Some((alias, target)) = st.ties.iter().find(|(alias, _)| *alias == key.name) {
                problems.push(Problem::TiedButStored {
                    alias: alias.clone(),
                    target: target.clone(),
                });
                continue;
            }
            let mut detail = st.plan.rename_chain(k);
            if let Some(unit) = key.unit.and_then(|u| st.plan.units[u].as_ref()) {
                if !detail.is_empty() {
                    detail.push_str("; ");
                }
                match &unit.plan {
                    Ok(_) => detail.push_str(&format!(
                        "source of {} for {:?}, which no module asked for",
                        st.plan.describe_unit(unit),
                        unit.targets
                    )),
                    Err(e) => detail.push_str(&format!(
                        "claimed by {}, which cannot run: {e}",
                        st.plan.describe_unit(unit)
                    )),
                }
            } else if detail.is_empty() {
                detail.push_str(crate::accounting::UNUSED);
            }
            problems.push(Problem::Unexpected {
                key: key.original.clone(),
                detail,
            });
        }
        let mut cached: Vec<&String> = st.cache.keys().collect();
        cached.sort_by(|a, b| natural_cmp(a, b));
        for name in cached {
            if let Some(&(u, _)) = st.plan.by_target.get(name) {
                let desc = st.plan.units[u]
                    .as_ref()
                    .map(|unit| st.plan.describe_unit(unit))
                    .unwrap_or_default();
                problems.push(Problem::Unexpected {
                    key: name.clone(),
                    detail: format!("produced by {desc} together with tensors that were asked for, but never asked for itself"),
                });
            }
        }
        problems.sort_by(|a, b| {
            let (ka, na) = a.sort_key();
            let (kb, nb) = b.sort_key();
            ka.cmp(&kb).then_with(|| natural_cmp(na, nb))
        });
        problems
    }

    /// Fails with every problem at once (see [`CheckpointSource::problems`]), or does nothing.
    pub fn check(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Accounting {
                source_name: format!("checkpoint {}", self.dir.display()),
                problems,
            })
        }
    }

    fn plan_request(&self, st: &mut State, r: &WeightRequest<'_>) -> Action {
        st.plan.learn_scopes(r.scopes);
        let asked = r.shape.dims();
        if let Some(&(u, index)) = st.plan.by_target.get(r.name) {
            let Some(unit) = st.plan.units[u].as_ref() else {
                return Action::Fail(Problem::Missing {
                    name: r.name.to_string(),
                    shape: asked.to_vec(),
                    detail: "internal: stale plan entry".into(),
                });
            };
            let desc = st.plan.describe_unit(unit);
            // A request that fails here still accounts for the keys it meant to use: they are
            // reported once, with the request, not again as unused.
            let problem = match &unit.plan {
                Err(e) => Some(Problem::Conversion {
                    name: r.name.to_string(),
                    detail: format!("{desc}: {e}"),
                }),
                Ok(_) => {
                    let produced = Plan::output_shapes(unit).swap_remove(index);
                    (produced != asked).then(|| {
                        let sources: Vec<&str> = unit
                            .keys()
                            .iter()
                            .map(|&k| st.plan.keys[k].original.as_str())
                            .collect();
                        Problem::Shape {
                            name: r.name.to_string(),
                            expected: asked.to_vec(),
                            found: produced,
                            detail: format!("made by {desc} from {sources:?}"),
                        }
                    })
                }
            };
            if let Some(problem) = problem {
                for k in unit.keys() {
                    st.plan.keys[k].consumed += 1;
                }
                return Action::Fail(problem);
            }
            if let Some(t) = st.cache.remove(r.name) {
                if let Some(unit) = st.plan.units[u].as_mut() {
                    unit.served[index] = true;
                }
                return Action::Ready {
                    tensor: t,
                    u,
                    index,
                };
            }
            let Some(unit) = st.plan.units[u].as_ref() else {
                unreachable!("checked above")
            };
            let Ok(shapes) = &unit.plan else {
                unreachable!("checked above")
            };
            let loads = unit
                .slots
                .iter()
                .map(|s| {
                    s.mapped(|&k| {
                        let key = &st.plan.keys[k];
                        (key.file, key.original.clone(), key.meta.clone())
                    })
                })
                .collect();
            return Action::Unit {
                u,
                index,
                loads,
                steps: shapes.steps.clone(),
            };
        }
        if let Some(&k) = st.plan.raw.get(r.name) {
            let key = &st.plan.keys[k];
            if key.meta.shape != asked {
                let mut detail = format!("checkpoint key {:?}", key.original);
                let chain = st.plan.rename_chain(k);
                if !chain.is_empty() {
                    detail = format!("{detail}, {chain}");
                }
                let found = key.meta.shape.clone();
                st.plan.keys[k].consumed += 1;
                return Action::Fail(Problem::Shape {
                    name: r.name.to_string(),
                    expected: asked.to_vec(),
                    found,
                    detail,
                });
            }
            return Action::Raw {
                k,
                file: key.file,
                meta: key.meta.clone(),
                original: key.original.clone(),
            };
        }
        Action::Fail(Problem::Missing {
            name: r.name.to_string(),
            shape: asked.to_vec(),
            detail: missing_detail(&st.plan, r),
        })
    }

    fn load_key(
        &self,
        file: usize,
        name: &str,
        meta: &TensorMeta,
        r: &WeightRequest<'_>,
    ) -> Result<Tensor> {
        let f = self
            .files
            .get(file)
            .ok_or_else(|| malformed(&self.dir, "internal: file index out of range"))?;
        f.load(name, meta, r.dtype, r.device)
    }

    fn placeholder(r: &WeightRequest<'_>) -> Result<Tensor> {
        Ok(Tensor::zeros((), r.dtype, r.device)?.broadcast_as(r.shape.clone())?)
    }
}

/// What a missing name's error says: the transforms in scope, and the keys stored under the
/// same parent module.
fn missing_detail(plan: &Plan, r: &WeightRequest<'_>) -> String {
    let mut parts = Vec::new();
    if plan.keys.iter().any(|k| k.original == r.name) {
        parts.push("the checkpoint stores it, but a renaming gives it another name".to_string());
    } else {
        parts.push("no checkpoint key and no conversion produces it".to_string());
    }
    if !r.scopes.is_empty() {
        let owners: Vec<String> = r
            .scopes
            .iter()
            .map(|s| format!("{} at {:?}", s.owner, s.prefix))
            .collect();
        parts.push(format!("transforms in scope: {}", owners.join(", ")));
    }
    // The module's own keys, else its parent's (`...self_attn` for `...self_attn.qkv_proj.weight`).
    let mut parent = r.name;
    let mut nearby: Vec<&str> = Vec::new();
    for _ in 0..2 {
        let Some((p, _)) = parent.rsplit_once('.') else {
            break;
        };
        parent = p;
        nearby = plan
            .keys
            .iter()
            .filter(|k| k.consumed == 0 && k.name != r.name && under(&k.name, parent))
            .map(|k| &k.name[parent.len() + 1..])
            .collect();
        if !nearby.is_empty() {
            break;
        }
    }
    nearby.sort_by(|a, b| natural_cmp(a, b));
    if !nearby.is_empty() {
        let total = nearby.len();
        nearby.truncate(6);
        parts.push(format!(
            "unused keys under {parent:?}: {}{}",
            nearby.join(", "),
            if total > 6 {
                format!(" and {} more", total - 6)
            } else {
                String::new()
            }
        ));
    }
    parts.join("; ")
}

impl WeightSource for CheckpointSource {
    fn get(&self, r: &WeightRequest<'_>) -> Result<Tensor> {
        let started = Instant::now();
        let action = {
            let mut st = self.lock();
            self.plan_request(&mut st, r)
        };
        let result = match action {
            Action::Ready { tensor, u, index } => {
                let mut st = self.lock();
                st.stats.served += 1;
                st.stats.busy += started.elapsed();
                if let Some(unit) = st.plan.unit_origin(u) {
                    let origin = Origin(OriginKind::Unit { unit, index });
                    st.origins.insert(r.name.to_string(), origin);
                }
                return Ok(tensor);
            }
            Action::Fail(p) => {
                let mut st = self.lock();
                let origin = Origin(OriginKind::Placeholder {
                    problem: p.to_string(),
                });
                st.origins.insert(r.name.to_string(), origin);
                st.problems.push(p);
                st.stats.busy += started.elapsed();
                return Self::placeholder(r);
            }
            Action::Raw {
                k,
                file,
                meta,
                original,
            } => self
                .load_key(file, &original, &meta, r)
                .map_err(|e| (true, e))
                .map(|t| {
                    (
                        t,
                        Some((k, original, meta.clone())),
                        1,
                        (meta.end - meta.start) as u64,
                    )
                }),
            Action::Unit {
                u,
                index,
                loads,
                steps,
            } => {
                let mut bytes = 0u64;
                let mut count = 0usize;
                let inputs: Result<Vec<Slot<Tensor>>> = loads
                    .iter()
                    .map(|s| {
                        s.as_ref().map(|(file, name, meta)| {
                            bytes += (meta.end - meta.start) as u64;
                            count += 1;
                            self.load_key(*file, name, meta, r)
                        })
                    })
                    .collect();
                let outputs = match inputs {
                    Ok(inputs) => run_steps(&steps, inputs).map_err(|e| (false, Error::from(e))),
                    Err(e) => Err((true, e)),
                };
                match outputs {
                    Ok(outputs) => {
                        let mut st = self.lock();
                        let st = &mut *st;
                        st.stats.units_run += 1;
                        st.stats.tensors_read += count;
                        st.stats.bytes_read += bytes;
                        st.stats.served += 1;
                        self.tell_progress(st);
                        let origin = st.plan.unit_origin(u);
                        let mut flat: Vec<Tensor> =
                            outputs.into_iter().flat_map(Slot::into_items).collect();
                        let unit = st.plan.units[u].as_mut();
                        let Some(unit) = unit else {
                            return Err(malformed(
                                &self.dir,
                                "internal: unit vanished while running",
                            ));
                        };
                        unit.runs += 1;
                        unit.served[index] = true;
                        // Another thread may have run the unit too and cached this output.
                        st.cache.remove(r.name);
                        let conv = unit.conv;
                        let keys = unit.keys();
                        for (j, t) in flat.iter().enumerate() {
                            if j != index && !unit.served[j] {
                                st.cache.insert(unit.targets[j].clone(), t.clone());
                            }
                        }
                        st.plan.convs[conv].units_run += 1;
                        for k in keys {
                            st.plan.keys[k].consumed += 1;
                        }
                        if let Some(origin) = origin {
                            st.origins.insert(
                                r.name.to_string(),
                                Origin(OriginKind::Unit {
                                    unit: origin,
                                    index,
                                }),
                            );
                        }
                        st.stats.busy += started.elapsed();
                        if index >= flat.len() {
                            return Err(malformed(&self.dir, "internal: unit output out of range"));
                        }
                        return Ok(flat.swap_remove(index));
                    }
                    Err(e) => Err(e),
                }
            }
        };
        // Errors of reading are the key's; errors of converting, the unit's.
        let mut st = self.lock();
        st.stats.busy += started.elapsed();
        match result {
            Ok((t, raw, reads, bytes)) => {
                st.stats.served += 1;
                st.stats.tensors_read += reads;
                st.stats.bytes_read += bytes;
                self.tell_progress(&st);
                if let Some((k, original, meta)) = raw {
                    st.plan.keys[k].consumed += 1;
                    if let Some(dtype) = candle_dtype(meta.dtype) {
                        st.origins.insert(
                            r.name.to_string(),
                            Origin(OriginKind::Raw {
                                key: original,
                                dtype,
                            }),
                        );
                    }
                }
                Ok(t)
            }
            Err((reading, e)) => {
                let (name, detail) = (r.name.to_string(), e.to_string());
                let p = if reading {
                    Problem::Unreadable { name, detail }
                } else {
                    Problem::Conversion { name, detail }
                };
                let origin = Origin(OriginKind::Placeholder {
                    problem: p.to_string(),
                });
                st.origins.insert(r.name.to_string(), origin);
                st.problems.push(p);
                drop(st);
                Self::placeholder(r)
            }
        }
    }

    fn contains(&self, name: &str, scopes: &[TransformScope]) -> bool {
        let mut st = self.lock();
        st.plan.learn_scopes(scopes);
        st.plan.by_target.contains_key(name) || st.plan.raw.contains_key(name)
    }

    fn finish(&self) -> Result<()> {
        self.check()
    }

    fn origin(&self, name: &str) -> Option<Origin> {
        self.lock().origins.get(name).cloned()
    }

    fn tie(&self, alias: &str, target: &str) {
        let mut st = self.lock();
        if !st.ties.iter().any(|(a, _)| a == alias) {
            st.ties.push((alias.to_string(), target.to_string()));
        }
    }

    fn checkpoint_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}
