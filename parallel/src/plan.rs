//! A parallel plan: which parts of a model are split across ranks, as a patch set.

use std::str::FromStr;
use std::sync::Arc;

use patch_core::{PatchKey, PatchSet, Replacement};

use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::experts::ExpertParallel;
use crate::layout::Layout;
use crate::projection::ParallelLinear;
use crate::tensor_parallel::{TensorParallelAttention, TensorParallelMlp};
use crate::tensor_parallel_experts::TensorParallelExperts;

/// The priority of a plan's patches: above the default (0), so that a plan's wrappers are the
/// outermost replacement at their sites and build the site's original inside.
pub const PRIORITY: i32 = 100;

/// The projections a tensor-parallel plan splits (transformers' `base_model_tp_plan` for these
/// families: q/k/v and gate/up `colwise`, o and down `rowwise`; and its causal-LM plan's
/// `lm_head: colwise_rep`, the vocabulary split and the logits gathered).
pub const TP_PROJECTIONS: &str =
    r"(\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|^lm_head)$";

/// Which parts of the model are split across ranks.
///
/// ```
/// use patchwork_parallel::ParallelPlan;
/// let plan: ParallelPlan = "tp+ep".parse()?;
/// assert!(plan.tensor && plan.experts);
/// assert_eq!(plan.to_string(), "tp+ep");
/// # Ok::<(), patchwork_parallel::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParallelPlan {
    /// Tensor parallel (`tp`), as the config's `base_model_tp_plan` (else transformers' plan
    /// for the family, [`crate::DEFAULT_TP_PLAN`]) says: attention heads and MLP intermediate
    /// widths split, q/k/v and gate/up column-parallel, o and down row-parallel then summed
    /// over ranks; routed experts' intermediate widths split (`moe_tp_experts`) unless `ep`
    /// holds them; the untied output head split by vocabulary rows, its logits gathered
    /// (transformers' `lm_head: colwise_rep`). Embeddings, norms, routers, the shared expert
    /// and a tied head are whole on every rank.
    pub tensor: bool,
    /// Expert parallel (`ep`): each MoE layer's routed experts split, tokens exchanged by
    /// all-to-all.
    pub experts: bool,
}

impl FromStr for ParallelPlan {
    type Err = Error;

    /// `tp`, `ep`, or `tp+ep` (either order).
    fn from_str(s: &str) -> Result<Self> {
        let mut plan = Self::default();
        for part in s.split('+') {
            match part.trim() {
                "tp" if !plan.tensor => plan.tensor = true,
                "ep" if !plan.experts => plan.experts = true,
                _ => return Err(Error::UnknownPlan(s.to_string())),
            }
        }
        Ok(plan)
    }
}

impl std::fmt::Display for ParallelPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<&str> = [(self.tensor, "tp"), (self.experts, "ep")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        write!(f, "{}", parts.join("+"))
    }
}

impl ParallelPlan {
    /// The patch set that applies this plan on the ranks of `comm` (add it with
    /// `LoadOptions::with_added_patches`, on every rank):
    ///
    /// - `tp`: [`TensorParallelAttention`] at every attention site (`Attention$`),
    ///   [`TensorParallelMlp`] at every MLP site (`MLP$`) and [`ParallelLinear`] at their
    ///   projections ([`TP_PROJECTIONS`]), [`TensorParallelExperts`] at every routed-experts
    ///   site without `ep`; each splits its block where the tensor-parallel plan says so, and
    ///   builds the site's original elsewhere;
    /// - `ep`: [`ExpertParallel`] at every routed-experts site (`Experts$`).
    ///
    /// Sizes that do not divide across the ranks fail the build with the key, the value and
    /// the number of ranks.
    pub fn patches(&self, comm: Arc<dyn Communicator>) -> Result<PatchSet> {
        let layout = Arc::new(Layout::new(comm));
        let label = format!("{self} over {} ranks", layout.comm.world());
        let mut mapping = Vec::new();
        if self.tensor {
            let (a, m, p) = (layout.clone(), layout.clone(), layout.clone());
            mapping.push((
                PatchKey::new("Attention$"),
                Replacement::configured::<TensorParallelAttention>(
                    label.clone(),
                    move |b, args| TensorParallelAttention::build_with(&a, b, args),
                ),
            ));
            mapping.push((
                PatchKey::new("MLP$"),
                Replacement::configured::<TensorParallelMlp>(label.clone(), move |b, args| {
                    TensorParallelMlp::build_with(&m, b, args)
                }),
            ));
            mapping.push((
                PatchKey::new("Linear").with_path(TP_PROJECTIONS),
                Replacement::configured::<ParallelLinear>(label.clone(), move |b, args| {
                    ParallelLinear::build_with(&p, b, args)
                }),
            ));
        }
        if self.experts {
            let e = layout.clone();
            mapping.push((
                PatchKey::new("Experts$"),
                Replacement::configured::<ExpertParallel>(label, move |b, args| {
                    ExpertParallel::build_with(&e, b, args)
                }),
            ));
        } else if self.tensor {
            let e = layout.clone();
            mapping.push((
                PatchKey::new("Experts$"),
                Replacement::configured::<TensorParallelExperts>(label, move |b, args| {
                    TensorParallelExperts::build_with(&e, b, args)
                }),
            ));
        }
        let mapping = mapping
            .into_iter()
            .map(|(key, r)| (key, r.with_priority(PRIORITY)));
        Ok(PatchSet::from_mapping(mapping)?)
    }
}
