//! The state dict of a build: every tensor a [`Weights`] handle handed out,
//! with the transform scopes of its request and the tied names, which saving and parameter
//! counts read; and the tensors handed out but not kept (a module that stores its weight in
//! another form, quantized), recorded by how to ask for them again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor, Var};

#[cfg(doc)]
use crate::Weights;
use crate::{Replicas, Shard, TransformScope};

/// One recorded parameter: the tensor and the transform scopes active when it was asked for.
#[derive(Clone, Debug)]
pub struct Param {
    /// The tensor handed out.
    pub tensor: Tensor,
    /// The transform scopes of the request, outermost first (saving reverses them).
    pub scopes: Arc<Vec<TransformScope>>,
}

/// Every tensor handed out through a [`Weights`] handle, by full name: the model's state dict,
/// with what saving needs (the scopes of each request, the tied names).
///
/// A tensor handed out by [`Weights::get_unkept`] is recorded as *deferred*: its shape, dtype
/// and scopes, and how to ask the source for it again. It counts as a parameter, saving writes
/// it (asking for it again), and [`ParamStore::fetch`] returns it; nothing holds its values in
/// between.
///
/// A tensor handed out by [`Weights::get_shard`] is this process's slice of a tensor split
/// across processes: the slice is kept (and is the variable when trainable), while
/// [`ParamStore::entries`] describes the full tensor and [`ParamStore::fetch`] rebuilds it
/// (collectively: every process must ask, in the same order).
#[derive(Default)]
pub struct ParamStore {
    tensors: Mutex<BTreeMap<String, Param>>,
    deferred: Mutex<BTreeMap<String, Deferred>>,
    shards: Mutex<BTreeMap<String, Shard>>,
    gathered: Mutex<BTreeMap<String, Tensor>>,
    ties: Mutex<BTreeMap<String, String>>,
}

/// How to produce a deferred parameter again.
pub(crate) type Produce = Arc<dyn Fn() -> crate::Result<Tensor> + Send + Sync>;

/// A parameter handed out and not kept: what it looked like, and how to get it again.
struct Deferred {
    shape: Shape,
    dtype: DType,
    device: Device,
    scopes: Arc<Vec<TransformScope>>,
    produce: Produce,
}

impl Deferred {
    /// A stand-in of its shape and dtype that holds one element (a broadcast zero), for the
    /// code that plans with shapes.
    fn placeholder(&self) -> candle_core::Result<Tensor> {
        Tensor::zeros((), self.dtype, &self.device)?.broadcast_as(self.shape.clone())
    }
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore")
            .field("tensors", &self.len())
            .field(
                "deferred",
                &self
                    .deferred
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len(),
            )
            .finish()
    }
}

impl ParamStore {
    /// Records that `alias` is tied to `target`.
    pub(crate) fn tie(&self, alias: String, target: String) {
        self.ties
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(alias, target);
    }

    /// Records `tensor` handed out as `name` under `scopes`.
    pub(crate) fn insert(&self, name: &str, tensor: &Tensor, scopes: &Arc<Vec<TransformScope>>) {
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                name.to_string(),
                Param {
                    tensor: tensor.clone(),
                    scopes: scopes.clone(),
                },
            );
    }

    /// Records that `name` was handed out as a tensor of `shape` and `dtype` under `scopes`,
    /// not kept: `produce` gives it again.
    pub(crate) fn insert_deferred(
        &self,
        name: &str,
        (shape, dtype, device): (Shape, DType, Device),
        scopes: &Arc<Vec<TransformScope>>,
        produce: Produce,
    ) {
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        self.deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                name.to_string(),
                Deferred {
                    shape,
                    dtype,
                    device,
                    scopes: scopes.clone(),
                    produce,
                },
            );
    }

    /// Records that `name` is this process's slice of a tensor split across processes.
    pub(crate) fn insert_shard(&self, name: &str, shard: Shard) {
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), shard);
    }

    /// How `name` is split across processes, when it was handed out by
    /// [`Weights::get_shard`].
    pub fn shard(&self, name: &str) -> Option<Shard> {
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Rebuilds every sharded parameter, in name order (collective: every process calls it at
    /// the same point), and, when `keep`, keeps the full tensors for [`ParamStore::fetch`]
    /// until [`ParamStore::release_gathered`]: what lets one process save a split model while
    /// the others only take part in the gathers.
    pub fn gather_shards(&self, keep: bool) -> crate::Result<()> {
        let shards: Vec<(String, Shard)> = self
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, shard) in shards {
            let Some(local) = self.get(&name) else {
                continue;
            };
            let full = shard.gather(&local, Replicas::Identical)?;
            if keep {
                self.gathered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name, full);
            }
        }
        Ok(())
    }

    /// Drops the full tensors [`ParamStore::gather_shards`] kept.
    pub fn release_gathered(&self) {
        self.gathered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Whether `name` was handed out without being kept ([`Weights::get_unkept`]).
    pub fn is_deferred(&self, name: &str) -> bool {
        self.deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
    }

    /// Replaces the tensor recorded under `name` (after training or editing a weight), keeping
    /// its scopes; returns false if nothing is recorded under `name`.
    pub fn set(&self, name: &str, tensor: Tensor) -> bool {
        match self
            .tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(name)
        {
            Some(p) => {
                p.tensor = tensor;
                true
            }
            None => false,
        }
    }

    /// The recorded parameters with their scopes, sorted by name; a deferred or sharded one's
    /// tensor is a stand-in of its (full) shape and dtype (its values: [`ParamStore::fetch`]).
    pub fn entries(&self) -> Vec<(String, Param)> {
        let mut out: Vec<(String, Param)> = self
            .tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, param) in out.iter_mut() {
            if let Some(shard) = shards.get(name) {
                let t = &param.tensor;
                if let Ok(full) = Tensor::zeros((), t.dtype(), t.device())
                    .and_then(|z| z.broadcast_as(shard.full_shape.clone()))
                {
                    param.tensor = full;
                }
            }
        }
        drop(shards);
        for (name, d) in self
            .deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            if let Ok(tensor) = d.placeholder() {
                out.push((
                    name.clone(),
                    Param {
                        tensor,
                        scopes: d.scopes.clone(),
                    },
                ));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The tied names (alias -> tensor it is tied to), as declared with [`Weights::tie`].
    pub fn ties(&self) -> BTreeMap<String, String> {
        self.ties
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The recorded trainable variables (every tensor handed out by a
    /// [trainable](Weights::trainable) handle), sorted by name: what an optimiser updates.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, p)| p.tensor.is_variable())
            .filter_map(|(k, p)| Var::from_tensor(&p.tensor).ok().map(|v| (k.clone(), v)))
            .collect()
    }

    /// The kept tensors, sorted by name (deferred ones are left out: see
    /// [`ParamStore::fetch`]).
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.tensor.clone()))
            .collect()
    }

    /// The tensor kept under `name`, if any (a deferred one is not kept: see
    /// [`ParamStore::fetch`]).
    pub fn get(&self, name: &str) -> Option<Tensor> {
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|p| p.tensor.clone())
    }

    /// The tensor recorded under `name`, if any, kept, deferred or sharded: a deferred one is
    /// asked for again (an error if the source cannot give it now), a sharded one rebuilt
    /// from every process's slice (collective).
    pub fn fetch(&self, name: &str) -> crate::Result<Option<Tensor>> {
        let gathered = self.gathered.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = gathered.get(name) {
            return Ok(Some(t.clone()));
        }
        drop(gathered);
        if let Some(t) = self.get(name) {
            return Ok(Some(match self.shard(name) {
                Some(shard) => shard.gather(&t, Replicas::Identical)?,
                None => t,
            }));
        }
        let produce = self
            .deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|d| d.produce.clone());
        produce.map(|p| p()).transpose()
    }

    /// Number of recorded tensors, deferred ones included.
    pub fn len(&self) -> usize {
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            + self
                .deferred
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total number of scalar parameters recorded, deferred ones included and sharded ones at
    /// their full size (tensors shared under two names count once per name).
    pub fn num_parameters(&self) -> usize {
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        let kept: usize = self
            .tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, p)| match shards.get(name) {
                Some(shard) => shard.full_shape.elem_count(),
                None => p.tensor.elem_count(),
            })
            .sum();
        drop(shards);
        let deferred: usize = self
            .deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|d| d.shape.elem_count())
            .sum();
        kept + deferred
    }
}
