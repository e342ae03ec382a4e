//! The load session over a [`Checkpoint`](crate::Checkpoint): [`CheckpointSource`] and its
//! state. What a request needs is decided under the lock (`request.rs`), reading and
//! converting happen outside it (`serve.rs`), and what was consumed is accounted for at the
//! end (`accounts.rs`).

mod accounts;
mod request;
mod serve;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use regex::Regex;

use crate::accounting::Problem;
use crate::origin::Origin;
use crate::pattern::natural_cmp;
use crate::plan::Plan;
use crate::safetensors_io::{SafetensorsFile, candle_dtype};
use crate::{Error, Result, TransformScope, WeightRequest, WeightSource};

use request::Action;

/// What the session counted, for the [`LoadReport`](crate::LoadReport).
#[derive(Default)]
struct Stats {
    tensors_read: usize,
    bytes_read: u64,
    served: usize,
    units_run: usize,
    busy: Duration,
}

/// The session's state, behind one lock.
struct State {
    plan: Plan,
    /// Problems met while serving requests.
    problems: Vec<Problem>,
    /// Unit outputs produced but not yet asked for.
    cache: HashMap<String, Tensor>,
    /// Where each served tensor came from.
    origins: HashMap<String, Origin>,
    /// (alias, target) of tied tensors.
    ties: Vec<(String, String)>,
    /// Keys allowed to stay unused.
    allowed: Vec<Regex>,
    stats: Stats,
}

/// A load session: serves a model's requests from a [`Checkpoint`](crate::Checkpoint),
/// converting on the way, and accounts for every tensor.
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

impl CheckpointSource {
    /// A session over `files` (the folder `dir`'s), serving by `plan`.
    pub(crate) fn new(dir: PathBuf, files: Arc<Vec<SafetensorsFile>>, plan: Plan) -> Self {
        let total_bytes = files
            .iter()
            .flat_map(|f| f.tensors.iter())
            .map(|(_, m)| m.len() as u64)
            .sum();
        CheckpointSource {
            dir,
            files,
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
        }
    }

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
        for unit in plan.units() {
            let dtype = unit
                .keys()
                .first()
                .and_then(|&k| candle_dtype(plan.key(k).meta().dtype))
                .unwrap_or(DType::F32);
            match unit.shapes() {
                Ok(_) => {
                    for (name, shape) in unit.targets().iter().zip(unit.output_shapes()) {
                        out.push(PlannedTensor {
                            name: name.clone(),
                            shape,
                            dtype,
                        })
                    }
                }
                Err(e) => st.problems.push(Problem::Conversion {
                    name: unit.targets().join(", "),
                    detail: format!("{}: {e}", plan.describe_unit(unit)),
                }),
            }
        }
        for (_, key) in plan.keys() {
            if key.unit().is_none() {
                out.push(PlannedTensor {
                    name: key.name().to_string(),
                    shape: key.meta().shape.clone(),
                    dtype: candle_dtype(key.meta().dtype).unwrap_or(DType::F32),
                });
            }
        }
        out.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        out
    }
}

impl WeightSource for CheckpointSource {
    fn get(&self, r: &WeightRequest<'_>) -> Result<Tensor> {
        let started = Instant::now();
        let action = self.lock().decide(r);
        match action {
            Action::Cached(cached) => Ok(self.serve_cached(r, cached, started)),
            Action::Fail(problem) => self.fail(r, problem, started),
            Action::Read(read) => self.read_key(r, read, started),
            Action::Run(run) => self.run_unit(r, run, started),
        }
    }

    fn get_chunks(
        &self,
        r: &WeightRequest<'_>,
        rows: usize,
        each: &mut dyn FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        let started = Instant::now();
        let action = self.lock().decide(r);
        match action {
            Action::Read(read) => self.read_key_chunks(r, read, started, rows, None, each),
            Action::Cached(cached) => each(self.serve_cached(r, cached, started)),
            Action::Fail(problem) => each(self.fail(r, problem, started)?),
            Action::Run(run) => each(self.run_unit(r, run, started)?),
        }
    }

    fn get_row_range(
        &self,
        r: &WeightRequest<'_>,
        range: Range<usize>,
        rows: usize,
        each: &mut dyn FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        let started = Instant::now();
        let action = self.lock().decide(r);
        let narrow = |t: Tensor| -> Result<Tensor> { Ok(t.narrow(0, range.start, range.len())?) };
        match action {
            Action::Read(read) => {
                self.read_key_chunks(r, read, started, rows, Some(range.clone()), each)
            }
            Action::Cached(cached) => each(narrow(self.serve_cached(r, cached, started))?),
            Action::Fail(problem) => each(narrow(self.fail(r, problem, started)?)?),
            Action::Run(run) => each(narrow(self.run_unit(r, run, started)?)?),
        }
    }

    fn contains(&self, name: &str, scopes: &[TransformScope]) -> bool {
        let mut st = self.lock();
        st.plan.learn_scopes(scopes);
        st.plan.produces(name)
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
