//! `CausalLM::explain`: how the family's sites resolved, and what was built where.

use super::CausalLM;
use crate::explain::ModelExplain;

impl CausalLM {
    /// How its family's sites resolve against the patches it was built with, and what was
    /// built at each path.
    pub fn explain(&self) -> ModelExplain {
        ModelExplain {
            model_type: self.family.model_type,
            architecture: self.family.architecture,
            explain: self.patches.explain(self.family.all_sites()),
            report: Some(self.report.clone()),
            implementations: Some((
                self.implementations.attention().name.clone(),
                self.implementations.experts().name.clone(),
            )),
        }
    }
}
