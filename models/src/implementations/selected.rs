//! The implementations a model computes with: the selected attention and experts
//! implementations, and the ones registered for that model alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::Result;

/// The implementations a model computes with, and the ones registered for it alone.
#[derive(Clone, Debug)]
pub struct Implementations {
    pub(crate) attention: Arc<super::AttentionImplementation>,
    pub(crate) experts: Arc<super::ExpertsImplementation>,
    pub(crate) local_attention: BTreeMap<String, Arc<super::AttentionImplementation>>,
    pub(crate) local_experts: BTreeMap<String, Arc<super::ExpertsImplementation>>,
}

impl Implementations {
    /// The named attention and experts implementations (a model's own registrations first,
    /// then the global ones); an error lists the registered names for an unknown one.
    pub(crate) fn resolve(attention: &str, experts: &str) -> Result<Self> {
        let mut out = Self::default();
        out.set_attention(attention)?;
        out.set_experts(experts)?;
        Ok(out)
    }

    /// Selects attention implementation `name`.
    pub(crate) fn set_attention(&mut self, name: &str) -> Result<()> {
        self.attention = match self.local_attention.get(name) {
            Some(imp) => imp.clone(),
            None => super::attention::global().get(name).ok_or_else(|| {
                let own: Vec<String> = self.local_attention.keys().cloned().collect();
                super::attention::global().unknown(name, &own)
            })?,
        };
        Ok(())
    }

    /// Selects experts implementation `name`.
    pub(crate) fn set_experts(&mut self, name: &str) -> Result<()> {
        self.experts = match self.local_experts.get(name) {
            Some(imp) => imp.clone(),
            None => super::experts::global().get(name).ok_or_else(|| {
                let own: Vec<String> = self.local_experts.keys().cloned().collect();
                super::experts::global().unknown(name, &own)
            })?,
        };
        Ok(())
    }

    /// The selected attention implementation.
    pub fn attention(&self) -> &Arc<super::AttentionImplementation> {
        &self.attention
    }

    /// The selected experts implementation.
    pub fn experts(&self) -> &Arc<super::ExpertsImplementation> {
        &self.experts
    }
}

impl Default for Implementations {
    /// `"sdpa"` attention and `"grouped_mm"` experts, the fast CPU paths.
    fn default() -> Self {
        Self {
            attention: super::attention::sdpa(),
            experts: super::experts::grouped_mm(),
            local_attention: BTreeMap::new(),
            local_experts: BTreeMap::new(),
        }
    }
}
