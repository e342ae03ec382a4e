//! `ModelExplain`: the answer to "is my patch applied?" for a model or a model type.

use std::fmt;

use patch_core::{BuildReport, Explain};

/// The answer to "is my patch applied?" for a model or a model type: how the family's sites
/// resolve (patterns that matched nothing, matches skipped and why) and, for a built model,
/// what was built at each path.
#[derive(Clone, Debug)]
pub struct ModelExplain {
    /// The family's `model_type`.
    pub model_type: &'static str,
    /// Its causal-LM class name.
    pub architecture: &'static str,
    /// How the family's sites resolve.
    pub explain: Explain,
    /// What was built at each path (built models only).
    pub report: Option<BuildReport>,
    /// The attention and experts implementations the built model computes with (built models
    /// only): what every attention site that attends through `decoder::attend` and every
    /// stacked-experts site runs.
    pub implementations: Option<(String, String)>,
}

impl fmt::Display for ModelExplain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model_type {} ({})", self.model_type, self.architecture)?;
        write!(f, "{}", self.explain)?;
        if let Some(report) = &self.report {
            writeln!(f)?;
            write!(f, "built: {report}")?;
        }
        if let Some((attention, experts)) = &self.implementations {
            writeln!(f)?;
            writeln!(
                f,
                "implementations: attention {attention:?} (every Attention site attending through decoder::attend)"
            )?;
            let moe = self
                .report
                .as_ref()
                .is_some_and(|r| r.sites().iter().any(|s| s.slot == "Experts"));
            if moe {
                writeln!(
                    f,
                    "                 experts {experts:?} (every Experts site over stacked weights)"
                )?;
            }
        }
        Ok(())
    }
}
