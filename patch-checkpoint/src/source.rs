//! Simple weight sources: in-memory tensors and seeded random initialisation.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_nn::Init;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::{Error, Result, TransformScope, WeightRequest, WeightSource};

/// In-memory tensors by full name; no transforms, no accounting. For tests and small tools.
#[derive(Clone, Debug, Default)]
pub struct TensorMap {
    tensors: HashMap<String, Tensor>,
}

impl TensorMap {
    /// A source over `tensors`.
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Self { tensors }
    }
}

impl FromIterator<(String, Tensor)> for TensorMap {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

impl WeightSource for TensorMap {
    fn get(&self, r: &WeightRequest<'_>) -> Result<Tensor> {
        let t = self.tensors.get(r.name).ok_or_else(|| Error::Missing {
            name: r.name.to_string(),
            shape: r.shape.dims().to_vec(),
            context: " (in-memory tensor map)".into(),
        })?;
        if t.dims() != r.shape.dims() {
            return Err(Error::Shape {
                name: r.name.to_string(),
                expected: r.shape.dims().to_vec(),
                found: t.dims().to_vec(),
                context: String::new(),
            });
        }
        Ok(t.to_dtype(r.dtype)?.to_device(r.device)?)
    }

    fn contains(&self, name: &str, _scopes: &[TransformScope]) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Seeded random initialisation: every tensor is a pure function of (seed, name, shape), so a
/// model is the same whatever order its modules are built in.
///
/// `Init::Const` hints are honoured (norm weights start at one); every other hint draws from a
/// normal distribution with mean 0 and standard deviation `std` (transformers' `initializer_range`).
#[derive(Clone, Debug)]
pub struct RandomInit {
    seed: u64,
    std: f64,
}

impl RandomInit {
    /// Random weights from `seed`, with standard deviation `std` for non-constant tensors.
    pub fn new(seed: u64, std: f64) -> Self {
        Self { seed, std }
    }
}

impl WeightSource for RandomInit {
    fn get(&self, r: &WeightRequest<'_>) -> Result<Tensor> {
        let n = r.shape.elem_count();
        let data: Vec<f32> = match r.init {
            Init::Const(v) => vec![v as f32; n],
            Init::Uniform { lo, up } if lo < up => {
                let mut rng = self.rng(r.name);
                let dist = Uniform::new(lo as f32, up as f32).map_err(|e| Error::Transform {
                    transform: format!("uniform init of {}", r.name),
                    message: e.to_string(),
                })?;
                (0..n).map(|_| dist.sample(&mut rng)).collect()
            }
            _ => {
                let mut rng = self.rng(r.name);
                let dist = Normal::new(0.0f32, self.std as f32).map_err(|e| Error::Transform {
                    transform: format!("normal init of {}", r.name),
                    message: e.to_string(),
                })?;
                (0..n).map(|_| dist.sample(&mut rng)).collect()
            }
        };
        let t = Tensor::from_vec(data, r.shape.clone(), r.device)?;
        Ok(if r.dtype == DType::F32 {
            t
        } else {
            t.to_dtype(r.dtype)?
        })
    }

    fn contains(&self, _name: &str, _scopes: &[TransformScope]) -> bool {
        true
    }
}

impl RandomInit {
    /// A generator seeded from (seed, name) with FNV-1a, which, unlike std's hasher, is stable
    /// across Rust versions: the same seed gives the same model everywhere.
    fn rng(&self, name: &str) -> SmallRng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.seed.to_le_bytes().iter().chain(name.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        SmallRng::seed_from_u64(h)
    }
}
