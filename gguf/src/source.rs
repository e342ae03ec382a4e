//! `GgufSource`: a GGUF file as a weight source: transformers' names mapped to the file's
//! tensors, floats dequantized on request, quantized blocks handed out as stored to modules that
//! compute on them ([`WeightSource::packed`]), and the same strict accounting as a safetensors
//! checkpoint (every tensor used, every request served).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use patch_checkpoint::{Error, Problem, Result, TransformScope, WeightRequest, WeightSource};

use crate::arch::Arch;
use crate::file::GgufFile;
use crate::names::{QueryOrKey, Stored, gguf_name, rope_permuted, unpermute_order};

/// A GGUF file serving a model's parameters by transformers' names (see the crate docs).
pub struct GgufSource {
    file: Arc<GgufFile>,
    arch: Arch,
    heads: usize,
    kv_heads: usize,
    used: Mutex<HashSet<String>>,
    problems: Mutex<Vec<Problem>>,
}

impl std::fmt::Debug for GgufSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufSource")
            .field("file", &self.file.path())
            .field("arch", &self.arch)
            .finish()
    }
}

/// GGUF tensors that are not parameters: consumed by the config (rope frequency factors).
const NOT_PARAMETERS: [&str; 1] = ["rope_freqs.weight"];

impl GgufSource {
    /// A source over `file` of architecture `arch`, whose attention has `heads` query and
    /// `kv_heads` key/value heads (llama's q/k rows are put back in order with them).
    pub fn new(file: Arc<GgufFile>, arch: Arch, heads: usize, kv_heads: usize) -> Self {
        Self {
            file,
            arch,
            heads,
            kv_heads,
            used: Mutex::new(HashSet::new()),
            problems: Mutex::new(Vec::new()),
        }
    }

    /// How the parameter `name` is made from the file, if it is one of the file's.
    fn stored(&self, name: &str) -> Option<Stored> {
        let layer_experts = name.strip_suffix(".mlp.experts.gate_up_proj");
        if let Some(prefix) = layer_experts {
            let gate = gguf_name(&format!("{prefix}.mlp.experts.gate_proj"))?;
            let up = gguf_name(&format!("{prefix}.mlp.experts.up_proj"))?;
            return Some(Stored::Stacked(gate, up));
        }
        // A tied head computes with the embedding (no `output.weight` in the file).
        let gguf = match gguf_name(name)? {
            g if g == "output.weight" && self.file.tensor(&g).is_none() => {
                "token_embd.weight".to_string()
            }
            g => g,
        };
        match (self.arch.permutes_qk(), rope_permuted(&gguf)) {
            (true, Some(QueryOrKey::Query)) => Some(Stored::Permuted {
                name: gguf,
                heads: self.heads,
            }),
            (true, Some(QueryOrKey::Key)) => Some(Stored::Permuted {
                name: gguf,
                heads: self.kv_heads,
            }),
            _ => Some(Stored::One(gguf)),
        }
    }

    /// The stored tensors `stored` reads, and its shape as a parameter.
    fn dims_of(&self, stored: &Stored) -> Option<Vec<usize>> {
        let dims = |n: &str| self.file.tensor(n).map(|t| t.dims.clone());
        match stored {
            Stored::One(n) | Stored::Permuted { name: n, .. } => dims(n),
            Stored::Stacked(a, b) => {
                let (mut da, db) = (dims(a)?, dims(b)?);
                if da.len() != 3 || da != db {
                    return None;
                }
                da[1] *= 2;
                Some(da)
            }
        }
    }

    /// The shape a request wants, compared with the stored one: the shared expert's gate is
    /// stored as `[H]` or `[1, H]`, both read as `[1, H]`.
    fn same_shape(wanted: &[usize], stored: &[usize]) -> bool {
        wanted == stored || (wanted.len() == 2 && wanted[0] == 1 && stored == [wanted[1]])
    }

    /// Resolves a request: the stored form, after checking the name and shape; records a
    /// problem and returns `None` otherwise.
    fn resolve(&self, r: &WeightRequest<'_>) -> Option<(Stored, Vec<usize>)> {
        let Some(stored) = self.stored(r.name) else {
            self.problem(Problem::Missing {
                name: r.name.to_string(),
                shape: r.shape.dims().to_vec(),
                detail: format!(
                    "no GGUF tensor of {} maps to this name",
                    self.file.path().display()
                ),
            });
            return None;
        };
        let Some(dims) = self.dims_of(&stored) else {
            self.problem(Problem::Missing {
                name: r.name.to_string(),
                shape: r.shape.dims().to_vec(),
                detail: format!("{stored} is not in {}", self.file.path().display()),
            });
            return None;
        };
        if !Self::same_shape(r.shape.dims(), &dims) {
            self.problem(Problem::Shape {
                name: r.name.to_string(),
                expected: r.shape.dims().to_vec(),
                found: dims,
                detail: stored.to_string(),
            });
            // Reported once, as mis-shaped, not again as unexpected.
            self.mark_used(&stored);
            return None;
        }
        Some((stored, dims))
    }

    fn problem(&self, p: Problem) {
        self.problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(p);
    }

    fn mark_used(&self, stored: &Stored) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        match stored {
            Stored::One(n) | Stored::Permuted { name: n, .. } => {
                used.insert(n.clone());
            }
            Stored::Stacked(a, b) => {
                used.insert(a.clone());
                used.insert(b.clone());
            }
        }
    }

    /// One stored tensor as candle blocks, rows put back in order for a permuted one.
    fn read(&self, stored: &Stored) -> Result<QTensor> {
        match stored {
            Stored::One(n) => self.file.qtensor(n, None),
            Stored::Permuted { name, heads } => {
                let meta = self
                    .file
                    .tensor(name)
                    .ok_or_else(|| self.file.error(format!("no tensor {name:?}")))?;
                let rows = meta.dims.first().copied().unwrap_or(0);
                let order = unpermute_order(rows, *heads).ok_or_else(|| {
                    self.file.error(format!(
                        "tensor {name:?}: {rows} rows do not split into {heads} heads of pairs"
                    ))
                })?;
                self.file.qtensor(name, Some(&order))
            }
            Stored::Stacked(..) => Err(self
                .file
                .error("internal: a stacked tensor is read part by part")),
        }
    }

    /// The tensor as floats in the request's dtype and shape.
    fn dequantized(&self, stored: &Stored, r: &WeightRequest<'_>) -> Result<Tensor> {
        let t = match stored {
            Stored::Stacked(a, b) => {
                let (ga, gb) = (self.file.qtensor(a, None)?, self.file.qtensor(b, None)?);
                let (ta, tb) = (ga.dequantize(&Device::Cpu)?, gb.dequantize(&Device::Cpu)?);
                Tensor::cat(&[&ta, &tb], 1)?
            }
            other => self.read(other)?.dequantize(&Device::Cpu)?,
        };
        Ok(t.reshape(r.shape.clone())?
            .to_dtype(r.dtype)?
            .to_device(r.device)?)
    }

    /// A stand-in for a failed request (its problem is reported by `finish`).
    fn placeholder(r: &WeightRequest<'_>) -> Result<Tensor> {
        Ok(Tensor::zeros((), r.dtype, r.device)?.broadcast_as(r.shape.clone())?)
    }

    /// The file.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }
}

impl WeightSource for GgufSource {
    fn get(&self, r: &WeightRequest<'_>) -> Result<Tensor> {
        let Some((stored, _)) = self.resolve(r) else {
            return Self::placeholder(r);
        };
        match self.dequantized(&stored, r) {
            Ok(t) => {
                self.mark_used(&stored);
                Ok(t)
            }
            Err(e) => {
                self.problem(Problem::Unreadable {
                    name: r.name.to_string(),
                    detail: e.to_string(),
                });
                Self::placeholder(r)
            }
        }
    }

    fn packed(&self, r: &WeightRequest<'_>) -> Result<Option<Arc<QTensor>>> {
        let Some(stored) = self.stored(r.name) else {
            return Ok(None);
        };
        let name = match &stored {
            Stored::One(n) | Stored::Permuted { name: n, .. } => n,
            Stored::Stacked(a, b) => {
                let (Some(ma), Some(mb)) = (self.file.tensor(a), self.file.tensor(b)) else {
                    return Ok(None);
                };
                let stacks = ma.dtype == mb.dtype && ma.dtype != GgmlDType::F32;
                if !stacks || self.dims_of(&stored).as_deref() != Some(r.shape.dims()) {
                    return Ok(None);
                }
                let q = self.file.qtensor_stacked(a, b)?;
                self.mark_used(&stored);
                return Ok(Some(Arc::new(q)));
            }
        };
        let Some(meta) = self.file.tensor(name) else {
            return Ok(None);
        };
        // Float32 is served as floats (the float path computes on it), and so is a tensor
        // stored with another rank than asked (a shared expert's gate).
        if meta.dtype == GgmlDType::F32 || r.shape.dims() != meta.dims.as_slice() {
            return Ok(None);
        }
        let q = self.read(&stored)?;
        self.mark_used(&stored);
        Ok(Some(Arc::new(q)))
    }

    fn contains(&self, name: &str, _scopes: &[TransformScope]) -> bool {
        self.stored(name).and_then(|s| self.dims_of(&s)).is_some()
    }

    fn finish(&self) -> Result<()> {
        let mut problems = self
            .problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let mut unused: Vec<&String> = self
            .file
            .tensors()
            .keys()
            .filter(|n| !used.contains(*n) && !NOT_PARAMETERS.contains(&n.as_str()))
            .collect();
        unused.sort();
        for key in unused {
            problems.push(Problem::Unexpected {
                key: key.clone(),
                detail: "GGUF tensor no module asked for".into(),
            });
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Accounting {
            source_name: format!("GGUF file {}", self.file.path().display()),
            problems,
        })
    }

    fn checkpoint_dir(&self) -> Option<&Path> {
        self.file.path().parent()
    }
}
