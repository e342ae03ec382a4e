//! The state dict of a build: every tensor a [`Weights`] handle handed out,
//! with the transform scopes of its request and the tied names, which saving and parameter
//! counts read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{Tensor, Var};

use crate::TransformScope;
#[cfg(doc)]
use crate::Weights;

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
#[derive(Debug, Default)]
pub struct ParamStore {
    tensors: Mutex<BTreeMap<String, Param>>,
    ties: Mutex<BTreeMap<String, String>>,
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

    /// The recorded parameters with their scopes, sorted by name.
    pub fn entries(&self) -> Vec<(String, Param)> {
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
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

    /// The recorded tensors, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.tensor.clone()))
            .collect()
    }

    /// The tensor recorded under `name`, if any.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|p| p.tensor.clone())
    }

    /// Number of recorded tensors.
    pub fn len(&self) -> usize {
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total number of scalar parameters recorded (tensors shared under two names count once
    /// per name).
    pub fn num_parameters(&self) -> usize {
        self.tensors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|p| p.tensor.elem_count())
            .sum()
    }
}
