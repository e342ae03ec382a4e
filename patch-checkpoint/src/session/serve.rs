//! Serving a decided request outside the lock (reading keys, running a unit), then recording
//! under the lock what it read, produced and consumed, and where the tensor came from.

use std::ops::Range;
use std::time::Instant;

use candle_core::Tensor;

use crate::accounting::Problem;
use crate::files::malformed;
use crate::ops::{Part, run_steps};
use crate::origin::{Origin, OriginKind};
use crate::plan::StoredKey;
use crate::safetensors_io::{ChunkError, candle_dtype};
use crate::{Error, Result, WeightRequest};

use super::request::{CachedOutput, KeyRead, UnitRun};
use super::{CheckpointSource, State};

/// Why serving failed: errors of reading are the key's, errors of converting the unit's.
enum Failure {
    Reading(Error),
    Converting(Error),
}

impl Failure {
    fn problem(self, name: &str) -> Problem {
        let name = name.to_string();
        match self {
            Failure::Reading(e) => Problem::Unreadable {
                name,
                detail: e.to_string(),
            },
            Failure::Converting(e) => Problem::Conversion {
                name,
                detail: e.to_string(),
            },
        }
    }
}

/// What running a unit read.
struct UnitInputs {
    tensors: Vec<Part<Tensor>>,
    count: usize,
    bytes: u64,
}

impl CheckpointSource {
    /// Hands out an output an earlier run of its unit cached.
    pub(super) fn serve_cached(
        &self,
        r: &WeightRequest<'_>,
        cached: CachedOutput,
        started: Instant,
    ) -> Tensor {
        let mut st = self.lock();
        st.stats.served += 1;
        st.stats.busy += started.elapsed();
        if let Some(unit) = st.plan.unit_origin(cached.output.unit) {
            let origin = Origin(OriginKind::Unit {
                unit,
                index: cached.output.index,
            });
            st.origins.insert(r.name.to_string(), origin);
        }
        cached.tensor
    }

    /// Records `problem` for `r` and hands out a placeholder.
    pub(super) fn fail(
        &self,
        r: &WeightRequest<'_>,
        problem: Problem,
        started: Instant,
    ) -> Result<Tensor> {
        let mut st = self.lock();
        st.stats.busy += started.elapsed();
        Self::record_failure(&mut st, r, problem);
        drop(st);
        Self::placeholder(r)
    }

    /// Reads a key for the request of its name.
    pub(super) fn read_key(
        &self,
        r: &WeightRequest<'_>,
        read: KeyRead,
        started: Instant,
    ) -> Result<Tensor> {
        let loaded = self.load_key(&read.stored, r);
        let mut st = self.lock();
        st.stats.busy += started.elapsed();
        match loaded {
            Ok(tensor) => {
                st.stats.served += 1;
                st.stats.tensors_read += 1;
                st.stats.bytes_read += read.stored.meta.len() as u64;
                self.tell_progress(&st);
                st.plan.consume(read.key);
                if let Some(dtype) = candle_dtype(read.stored.meta.dtype) {
                    let origin = Origin(OriginKind::Key {
                        key: read.stored.original,
                        dtype,
                    });
                    st.origins.insert(r.name.to_string(), origin);
                }
                Ok(tensor)
            }
            Err(e) => {
                // Asked for, so reported once: unreadable, not also unexpected.
                st.plan.consume(read.key);
                Self::record_failure(&mut st, r, Failure::Reading(e).problem(r.name));
                drop(st);
                Self::placeholder(r)
            }
        }
    }

    /// Reads a key in chunks of at most `rows` entries of its first dimension, each handed to
    /// `each` as it is read. A chunk the file cannot give records the problem (as
    /// [`CheckpointSource::read_key`] does) and hands zeros for the rows left, so the consumer
    /// sees the whole shape and loading goes on to report every problem.
    pub(super) fn read_key_chunks(
        &self,
        r: &WeightRequest<'_>,
        read: KeyRead,
        started: Instant,
        rows: usize,
        range: Option<Range<usize>>,
        each: &mut dyn FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        let f = self
            .files
            .get(read.stored.file)
            .ok_or_else(|| malformed(&self.dir, "internal: file index out of range"))?;
        let mut done = 0usize;
        let mut counting = |t: Tensor| {
            done += t.dims().first().copied().unwrap_or(1);
            each(t)
        };
        let loaded = f.load_chunks(
            &read.stored.original,
            &read.stored.meta,
            (r.dtype, r.device),
            rows,
            range.clone(),
            &mut counting,
        );
        let failed = match loaded {
            Ok(()) => None,
            Err(ChunkError::Consumer(e)) => return Err(e),
            Err(ChunkError::Read(e)) => Some(e),
        };
        let mut st = self.lock();
        st.stats.busy += started.elapsed();
        let Some(e) = failed else {
            st.stats.served += 1;
            st.stats.tensors_read += 1;
            st.stats.bytes_read += match &range {
                // Only the rows read (rows of equal size: the file's bytes over its rows).
                Some(range) => {
                    let rows = read.stored.meta.shape.first().copied().unwrap_or(1).max(1);
                    (read.stored.meta.len() / rows * range.len()) as u64
                }
                None => read.stored.meta.len() as u64,
            };
            self.tell_progress(&st);
            st.plan.consume(read.key);
            if let Some(dtype) = candle_dtype(read.stored.meta.dtype) {
                let origin = Origin(OriginKind::Key {
                    key: read.stored.original,
                    dtype,
                });
                st.origins.insert(r.name.to_string(), origin);
            }
            return Ok(());
        };
        st.plan.consume(read.key);
        Self::record_failure(&mut st, r, Failure::Reading(e).problem(r.name));
        drop(st);
        let mut left = r.shape.dims().to_vec();
        if let (Some(range), Some(first)) = (&range, left.first_mut()) {
            *first = range.len();
        }
        match left.first_mut() {
            Some(first) if *first > done => *first -= done,
            Some(_) => return Ok(()),
            None if done > 0 => return Ok(()),
            None => {}
        }
        each(Tensor::zeros(left, r.dtype, r.device)?)
    }

    /// Runs a unit for one of its outputs; keeps the outputs not asked for yet.
    pub(super) fn run_unit(
        &self,
        r: &WeightRequest<'_>,
        run: UnitRun,
        started: Instant,
    ) -> Result<Tensor> {
        let produced = self.read_inputs(&run.inputs, r).and_then(|inputs| {
            let outputs = run_steps(&run.steps, inputs.tensors)
                .map_err(|e| Failure::Converting(Error::from(e)))?;
            Ok((inputs.count, inputs.bytes, outputs))
        });
        let (count, bytes, outputs) = match produced {
            Ok(produced) => produced,
            Err(failure) => {
                let mut st = self.lock();
                st.stats.busy += started.elapsed();
                Self::record_failure(&mut st, r, failure.problem(r.name));
                drop(st);
                return Self::placeholder(r);
            }
        };
        let mut st = self.lock();
        let st = &mut *st;
        st.stats.units_run += 1;
        st.stats.tensors_read += count;
        st.stats.bytes_read += bytes;
        st.stats.served += 1;
        self.tell_progress(st);
        let index = run.output.index;
        let origin = st.plan.unit_origin(run.output.unit);
        let mut flat: Vec<Tensor> = outputs.into_iter().flat_map(Part::into_items).collect();
        let Some(unit) = st.plan.unit_ran(run.output) else {
            return Err(malformed(
                &self.dir,
                "internal: unit vanished while running",
            ));
        };
        // Another thread may have run the unit too and cached this output.
        st.cache.remove(r.name);
        for (j, (t, name)) in flat.iter().zip(unit.targets()).enumerate() {
            if !unit.is_served(j) {
                st.cache.insert(name.clone(), t.clone());
            }
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
        Ok(flat.swap_remove(index))
    }

    /// Reads a unit's keys, per source part.
    fn read_inputs(
        &self,
        inputs: &[Part<StoredKey>],
        r: &WeightRequest<'_>,
    ) -> std::result::Result<UnitInputs, Failure> {
        let mut bytes = 0u64;
        let mut count = 0usize;
        let tensors = inputs
            .iter()
            .map(|part| {
                part.as_ref().map(|stored| {
                    bytes += stored.meta.len() as u64;
                    count += 1;
                    self.load_key(stored, r)
                })
            })
            .collect::<Result<Vec<_>>>()
            .map_err(Failure::Reading)?;
        Ok(UnitInputs {
            tensors,
            count,
            bytes,
        })
    }

    fn record_failure(st: &mut State, r: &WeightRequest<'_>, problem: Problem) {
        let origin = Origin(OriginKind::Placeholder {
            problem: problem.to_string(),
        });
        st.origins.insert(r.name.to_string(), origin);
        st.problems.push(problem);
    }

    fn load_key(&self, stored: &StoredKey, r: &WeightRequest<'_>) -> Result<Tensor> {
        let f = self
            .files
            .get(stored.file)
            .ok_or_else(|| malformed(&self.dir, "internal: file index out of range"))?;
        f.load(&stored.original, &stored.meta, r.dtype, r.device)
    }

    fn placeholder(r: &WeightRequest<'_>) -> Result<Tensor> {
        Ok(Tensor::zeros((), r.dtype, r.device)?.broadcast_as(r.shape.clone())?)
    }
}
