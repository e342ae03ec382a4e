//! Deciding what a request needs, under the session's lock: a cached unit output, a key to
//! read, a unit to run, or a problem (recorded, with the keys it meant to use consumed).

use crate::WeightRequest;
use crate::accounting::Problem;
use crate::ops::{Part, Step};
use crate::pattern::natural_cmp;
use crate::plan::{KeyId, OutputRef, Plan, StoredKey, under};

use super::State;

/// What a request needs done outside the lock.
pub(super) enum Action {
    /// A unit output cached by an earlier run of its unit.
    Cached(CachedOutput),
    /// A key to read as it is.
    Read(KeyRead),
    /// A unit to run.
    Run(UnitRun),
    /// The request cannot be served: a placeholder, and this problem.
    Fail(Problem),
}

/// A unit output produced by an earlier run and kept until asked for.
pub(super) struct CachedOutput {
    pub tensor: candle_core::Tensor,
    pub output: OutputRef,
}

/// A key read for a request by its name.
pub(super) struct KeyRead {
    pub key: KeyId,
    pub stored: StoredKey,
}

/// A unit run for one of its outputs: the keys it reads per source part, and its steps.
pub(super) struct UnitRun {
    pub output: OutputRef,
    pub inputs: Vec<Part<StoredKey>>,
    pub steps: Vec<Step>,
}

impl State {
    /// What serving `r` needs. A request that fails here still accounts for the keys it meant
    /// to use: they are reported once, with the request, not again as unused.
    pub(super) fn decide(&mut self, r: &WeightRequest<'_>) -> Action {
        self.plan.learn_scopes(r.scopes);
        if let Some(output) = self.plan.output(r.name) {
            return self.decide_output(r, output);
        }
        if let Some(k) = self.plan.key_named(r.name) {
            return self.decide_key(r, k);
        }
        Action::Fail(Problem::Missing {
            name: r.name.to_string(),
            shape: r.shape.dims().to_vec(),
            detail: missing_detail(&self.plan, r),
        })
    }

    /// A request for a unit's output: checked against the unit's plan, then served from the
    /// cache or by running the unit.
    fn decide_output(&mut self, r: &WeightRequest<'_>, output: OutputRef) -> Action {
        let asked = r.shape.dims();
        let checked = match self.plan.unit(output.unit) {
            None => {
                return Action::Fail(Problem::Missing {
                    name: r.name.to_string(),
                    shape: asked.to_vec(),
                    detail: "internal: stale plan entry".into(),
                });
            }
            Some(unit) => {
                let desc = self.plan.describe_unit(unit);
                match unit.shapes() {
                    Err(e) => Err(Problem::Conversion {
                        name: r.name.to_string(),
                        detail: format!("{desc}: {e}"),
                    }),
                    Ok(shapes) => {
                        let produced = unit
                            .output_shapes()
                            .into_iter()
                            .nth(output.index)
                            .unwrap_or_default();
                        if produced != asked {
                            let sources: Vec<&str> = unit
                                .keys()
                                .iter()
                                .map(|&k| self.plan.key(k).original())
                                .collect();
                            Err(Problem::Shape {
                                name: r.name.to_string(),
                                expected: asked.to_vec(),
                                found: produced,
                                detail: format!("made by {desc} from {sources:?}"),
                            })
                        } else {
                            Ok(UnitRun {
                                output,
                                inputs: unit
                                    .parts()
                                    .iter()
                                    .map(|p| p.mapped(|&k| self.plan.key(k).stored().clone()))
                                    .collect(),
                                steps: shapes.steps.clone(),
                            })
                        }
                    }
                }
            }
        };
        match checked {
            Err(problem) => {
                self.plan.consume_unit(output.unit);
                Action::Fail(problem)
            }
            Ok(run) => match self.cache.remove(r.name) {
                Some(tensor) => {
                    self.plan.mark_served(output);
                    Action::Cached(CachedOutput { tensor, output })
                }
                None => Action::Run(run),
            },
        }
    }

    /// A request for a key by its effective name.
    fn decide_key(&mut self, r: &WeightRequest<'_>, k: KeyId) -> Action {
        let asked = r.shape.dims();
        let key = self.plan.key(k);
        if key.meta().shape != asked {
            let mut detail = format!("checkpoint key {:?}", key.original());
            let chain = self.plan.rename_chain(k);
            if !chain.is_empty() {
                detail = format!("{detail}, {chain}");
            }
            let found = key.meta().shape.clone();
            self.plan.consume(k);
            return Action::Fail(Problem::Shape {
                name: r.name.to_string(),
                expected: asked.to_vec(),
                found,
                detail,
            });
        }
        Action::Read(KeyRead {
            key: k,
            stored: key.stored().clone(),
        })
    }
}

/// What a missing name's error says: the transforms in scope, and the keys stored under the
/// same parent module.
fn missing_detail(plan: &Plan, r: &WeightRequest<'_>) -> String {
    let mut parts = Vec::new();
    if plan.keys().any(|(_, k)| k.original() == r.name) {
        parts.push("the checkpoint stores it, but a renaming gives it another name".to_string());
    } else {
        parts.push("no checkpoint key and no conversion produces it".to_string());
    }
    if !r.scopes.is_empty() {
        let owners: Vec<String> = r
            .scopes
            .iter()
            .map(|s| format!("{} at {:?}", s.owner, s.prefix))
            .collect();
        parts.push(format!("transforms in scope: {}", owners.join(", ")));
    }
    // The module's own keys, else its parent's (`...self_attn` for `...self_attn.qkv_proj.weight`).
    let mut parent = r.name;
    let mut nearby: Vec<&str> = Vec::new();
    for _ in 0..2 {
        let Some((p, _)) = parent.rsplit_once('.') else {
            break;
        };
        parent = p;
        nearby = plan
            .keys()
            .map(|(_, k)| k)
            .filter(|k| !k.consumed() && k.name() != r.name && under(k.name(), parent))
            .filter_map(|k| k.name().get(parent.len() + 1..))
            .collect();
        if !nearby.is_empty() {
            break;
        }
    }
    nearby.sort_by(|a, b| natural_cmp(a, b));
    if !nearby.is_empty() {
        let total = nearby.len();
        nearby.truncate(6);
        parts.push(format!(
            "unused keys under {parent:?}: {}{}",
            nearby.join(", "),
            if total > 6 {
                format!(" and {} more", total - 6)
            } else {
                String::new()
            }
        ));
    }
    parts.join("; ")
}
