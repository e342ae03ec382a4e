//! The path-scoped weight handle layers pull their tensors from.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::{Origin, ParamStore, Result, Transform};

mod shard;
mod unkept;

pub use shard::{Gather, Replicas, Shard, ShardRange};

/// Transforms carried by a replacement module, active for every request under `prefix`.
///
/// How they combine with the registry's (see `plan/` for the details): the registry's
/// renamings apply first (the checkpoint's names become the model's), then the renamings of
/// the scopes covering a key, outer first; converters claim keys innermost scope first, then
/// the registry's. So a replacement's converter wins over the model's default for the keys
/// under its path, and a replacement that asks for the checkpoint's own tensors (per-expert
/// weights) simply gets them: the default conversion only runs when its target is asked for.
#[derive(Clone, Debug)]
pub struct TransformScope {
    /// Dotted module path the transforms apply under (`model.layers.0.self_attn`).
    pub prefix: String,
    /// Who carries them (the replacement's type name), for reports.
    pub owner: &'static str,
    /// The transforms, in order.
    pub transforms: Arc<[Transform]>,
}

/// One tensor a module asks for.
#[derive(Debug)]
pub struct WeightRequest<'a> {
    /// Full dotted name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: &'a str,
    /// The shape the module expects.
    pub shape: &'a Shape,
    /// How a random source should initialise it.
    pub init: Init,
    /// The compute dtype the tensor must come back in.
    pub dtype: DType,
    /// The device it must come back on.
    pub device: &'a Device,
    /// Transforms carried by enclosing replacements, outermost first.
    pub scopes: &'a [TransformScope],
}

/// Where weights come from: a checkpoint, random initialisation, in-memory tensors.
pub trait WeightSource: Send + Sync + 'static {
    /// Produces the tensor for `request`, in the requested dtype, device and shape.
    fn get(&self, request: &WeightRequest<'_>) -> Result<Tensor>;

    /// Produces the tensor for `request` as [`WeightSource::get`] does, handed to `each` in
    /// consecutive chunks along its first dimension, in order, at most `rows` entries each
    /// when the source can split it (a checkpoint key read as stored: each chunk is read from
    /// the file and its pages released before the next), else as one chunk (the default).
    /// What a module that converts the values as it goes (a quantizer) asks for, so that it
    /// never holds the whole float tensor.
    fn get_chunks(
        &self,
        request: &WeightRequest<'_>,
        rows: usize,
        each: &mut dyn FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        let _ = rows;
        each(self.get(request)?)
    }

    /// Entries `range` of the first dimension of the tensor `request` names (one process's
    /// share of a tensor split across processes), handed to `each` in chunks as
    /// [`WeightSource::get_chunks`] hands the whole tensor; the tensor counts as used. The
    /// default reads every chunk and keeps the entries in `range`; a checkpoint reads only
    /// those entries' bytes from the file.
    fn get_row_range(
        &self,
        request: &WeightRequest<'_>,
        range: std::ops::Range<usize>,
        rows: usize,
        each: &mut dyn FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        let mut at = 0usize;
        self.get_chunks(request, rows, &mut |chunk| {
            let n = chunk.dims().first().copied().unwrap_or(1);
            let (lo, hi) = (range.start.max(at), range.end.min(at + n));
            at += n;
            if lo < hi {
                each(chunk.narrow(0, lo - (at - n), hi - lo)?)?;
            }
            Ok(())
        })
    }

    /// Whether `name` can be produced (used by optional weights such as biases or tied heads).
    fn contains(&self, name: &str, scopes: &[TransformScope]) -> bool;

    /// Called once the model is built: a strict source checks here that every tensor it holds
    /// was consumed, and fails with the full list of problems otherwise.
    fn finish(&self) -> Result<()> {
        Ok(())
    }

    /// Where the tensor served as `name` came from, if the source recorded it (a checkpoint
    /// does): what saving needs to write it back exactly.
    fn origin(&self, _name: &str) -> Option<Origin> {
        None
    }

    /// The tensor `request` names as the source stores it, when it stores it in quantized
    /// blocks (a GGUF file): what a quantized module computes on directly, without a float
    /// copy. `Ok(None)` when the tensor is stored as floats, or the source has no blocks to
    /// give (the default); [`WeightSource::get`] then serves it as floats. A tensor served
    /// packed counts as used, as `get` would count it.
    fn packed(&self, _request: &WeightRequest<'_>) -> Result<Option<Arc<QTensor>>> {
        Ok(None)
    }

    /// The model uses `target` for `alias` too (tied embeddings) and will not ask for `alias`;
    /// a strict source reports a stored `alias` instead of calling it merely unused.
    fn tie(&self, _alias: &str, _target: &str) {}

    /// The checkpoint folder the source reads, if any (saving refuses to overwrite it).
    fn checkpoint_dir(&self) -> Option<&Path> {
        None
    }
}

/// A path-scoped view of a [`WeightSource`]: what a layer under construction pulls its
/// tensors from. Cheap to clone; [`Weights::pp`] descends into a sub-module.
#[derive(Clone)]
pub struct Weights {
    source: Arc<dyn WeightSource>,
    path: String,
    scopes: Arc<Vec<TransformScope>>,
    dtype: DType,
    device: Device,
    params: Arc<ParamStore>,
    trainable: bool,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.path)
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .field("scopes", &self.scopes.len())
            .field("trainable", &self.trainable)
            .finish()
    }
}

impl Weights {
    /// A root handle over `source`, producing tensors in `dtype` on `device`.
    pub fn new(source: impl WeightSource, dtype: DType, device: &Device) -> Self {
        Self::from_arc(Arc::new(source), dtype, device)
    }

    /// Like [`Weights::new`], for a source that is already shared.
    pub fn from_arc(source: Arc<dyn WeightSource>, dtype: DType, device: &Device) -> Self {
        Self {
            source,
            path: String::new(),
            scopes: Arc::new(Vec::new()),
            dtype,
            device: device.clone(),
            params: Arc::new(ParamStore::default()),
            trainable: false,
        }
    }

    /// This handle (and every handle descended from it) handing out each floating-point
    /// tensor as a trainable candle [`Var`]: a copy of what the source produced, recorded in
    /// [`Weights::params`] (see [`ParamStore::vars`]), so an optimiser's updates are what the
    /// model computes with and what saving writes.
    pub fn trainable(mut self) -> Self {
        self.trainable = true;
        self
    }

    /// Whether tensors are handed out as trainable variables.
    pub fn is_trainable(&self) -> bool {
        self.trainable
    }

    /// Records `tensor` under `full` (as a new variable when trainable) and hands it out.
    pub(crate) fn hand_out(&self, full: &str, tensor: Tensor) -> candle_core::Result<Tensor> {
        let tensor = if self.trainable && tensor.dtype().is_float() {
            Var::from_tensor(&tensor)?.into_inner()
        } else {
            tensor
        };
        self.params.insert(full, &tensor, &self.scopes);
        Ok(tensor)
    }

    /// The handle for sub-module `name` (`"layers"`, `"0"`, `"self_attn"`, or a dotted path).
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        let mut next = self.clone();
        next.path = self.full_name(name);
        next
    }

    /// The dotted path of this handle (empty at the root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The compute dtype tensors come back in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors come back on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// This handle with another compute dtype (same source, path and record).
    pub fn with_dtype(&self, dtype: DType) -> Self {
        let mut next = self.clone();
        next.dtype = dtype;
        next
    }

    /// The transform scopes active at this path, outermost first.
    pub fn scopes(&self) -> &[TransformScope] {
        &self.scopes
    }

    /// The tensors handed out so far, by full name.
    pub fn params(&self) -> &Arc<ParamStore> {
        &self.params
    }

    /// The source behind this handle.
    pub fn source(&self) -> &Arc<dyn WeightSource> {
        &self.source
    }

    fn full_name(&self, name: &str) -> String {
        match (self.path.is_empty(), name.is_empty()) {
            (true, _) => name.to_string(),
            (false, true) => self.path.clone(),
            (false, false) => format!("{}.{}", self.path, name),
        }
    }

    /// The tensor `name` under this path, with the given shape.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        self.get_with_init(
            shape,
            name,
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )
    }

    /// Like [`Weights::get`], telling a random source how to initialise it.
    pub fn get_with_init(&self, shape: impl Into<Shape>, name: &str, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        let full = self.full_name(name);
        let tensor = self.source.get(&WeightRequest {
            name: &full,
            shape: &shape,
            init,
            dtype: self.dtype,
            device: &self.device,
            scopes: &self.scopes,
        })?;
        Ok(self.hand_out(&full, tensor)?)
    }

    /// Declares that the model uses `target` for `alias` too (both relative to this path), as
    /// tied embeddings do: `weights.tie("lm_head.weight", "model.embed_tokens.weight")` when
    /// the config says `tie_word_embeddings`. The model then does not ask for `alias`; a
    /// checkpoint that stores it anyway is reported by [`Weights::finish`] (its values would
    /// be silently ignored otherwise), and saving leaves it out, as transformers does.
    ///
    /// Which head to use is the model's decision: with untied embeddings it asks for
    /// `lm_head.weight` and a checkpoint without one is reported missing.
    pub fn tie(&self, alias: &str, target: &str) {
        let (alias, target) = (self.full_name(alias), self.full_name(target));
        self.source.tie(&alias, &target);
        self.params.tie(alias, target);
    }

    /// Where the tensor handed out as `name` (relative to this path) came from, if the source
    /// recorded it.
    pub fn origin(&self, name: &str) -> Option<Origin> {
        self.source.origin(&self.full_name(name))
    }

    /// Whether the source can produce `name` under this path.
    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(&self.full_name(name), &self.scopes)
    }

    /// This handle with `transforms` active for every request under the current path; `owner`
    /// names who carries them in reports.
    pub fn with_transforms(&self, owner: &'static str, transforms: Vec<Transform>) -> Self {
        if transforms.is_empty() {
            return self.clone();
        }
        let mut scopes = (*self.scopes).clone();
        scopes.push(TransformScope {
            prefix: self.path.clone(),
            owner,
            transforms: transforms.into(),
        });
        let mut next = self.clone();
        next.scopes = Arc::new(scopes);
        next
    }

    /// A candle-nn `VarBuilder` at this path, so `candle_nn::linear` and friends work; its
    /// tensors go through this handle (same source, transforms and record).
    pub fn var_builder(&self) -> VarBuilder<'static> {
        let root = Weights {
            path: String::new(),
            ..self.clone()
        };
        let vb = VarBuilder::from_backend(
            Box::new(crate::var_builder::Backend(root)),
            self.dtype,
            self.device.clone(),
        );
        if self.path.is_empty() {
            vb
        } else {
            vb.push_prefix(&self.path)
        }
    }

    /// Ends the build: asks the source for its strict accounting. With a
    /// [`crate::CheckpointSource`] this is where every missing, unexpected or mis-shaped tensor
    /// is reported (requests hand out placeholders so that all problems are found in one
    /// build): always call it before using the model.
    pub fn finish(&self) -> Result<()> {
        self.source.finish()
    }
}
