//! Accounting for a session: every problem so far plus every stored tensor nobody consumed
//! (the strict check `finish` runs), and the [`LoadReport`] of what the load did.

use crate::accounting::{FiredTransform, LoadReport, Problem, UNUSED};
use crate::pattern::natural_cmp;
use crate::{Error, Result};

use super::CheckpointSource;

impl CheckpointSource {
    /// What the load did so far.
    pub fn report(&self) -> LoadReport {
        let st = self.lock();
        // One line per transform and supplier: a replacement built at every layer counts once.
        let mut transforms: Vec<FiredTransform> = Vec::new();
        for fired in st.plan.fired().into_iter().filter(|f| f.count > 0) {
            match transforms
                .iter_mut()
                .find(|t| t.transform == fired.transform && t.owner == fired.owner)
            {
                Some(t) => t.count += fired.count,
                None => transforms.push(FiredTransform {
                    transform: fired.transform,
                    owner: fired.owner.to_string(),
                    count: fired.count,
                }),
            }
        }
        LoadReport {
            checkpoint: self.dir.display().to_string(),
            tensors_read: st.stats.tensors_read,
            bytes_read: st.stats.bytes_read,
            tensors_served: st.stats.served,
            units_run: st.stats.units_run,
            transforms,
            elapsed: st.stats.busy,
        }
    }

    /// Every problem so far, plus every checkpoint tensor nobody asked for: the strict
    /// accounting [`WeightSource::finish`](crate::WeightSource::finish) turns into one error.
    pub fn problems(&self) -> Vec<Problem> {
        let st = self.lock();
        let mut problems = st.plan.problems().to_vec();
        problems.extend(st.problems.iter().cloned());
        let allowed = |key: &str| st.allowed.iter().any(|re| re.is_match(key));
        for (k, key) in st.plan.keys() {
            if key.consumed() || allowed(key.original()) {
                continue;
            }
            if let Some((alias, target)) = st.ties.iter().find(|(alias, _)| alias == key.name()) {
                problems.push(Problem::TiedButStored {
                    alias: alias.clone(),
                    target: target.clone(),
                });
                continue;
            }
            let mut detail = st.plan.rename_chain(k);
            if let Some(unit) = key.unit().and_then(|u| st.plan.unit(u)) {
                if !detail.is_empty() {
                    detail.push_str("; ");
                }
                match unit.shapes() {
                    Ok(_) => detail.push_str(&format!(
                        "source of {} for {:?}, which no module asked for",
                        st.plan.describe_unit(unit),
                        unit.targets()
                    )),
                    Err(e) => detail.push_str(&format!(
                        "claimed by {}, which cannot run: {e}",
                        st.plan.describe_unit(unit)
                    )),
                }
            } else if detail.is_empty() {
                detail.push_str(UNUSED);
            }
            problems.push(Problem::Unexpected {
                key: key.original().to_string(),
                detail,
            });
        }
        let mut cached: Vec<&String> = st.cache.keys().collect();
        cached.sort_by(|a, b| natural_cmp(a, b));
        for name in cached {
            if let Some(output) = st.plan.output(name) {
                let desc = st
                    .plan
                    .unit(output.unit)
                    .map(|unit| st.plan.describe_unit(unit))
                    .unwrap_or_default();
                problems.push(Problem::Unexpected {
                    key: name.clone(),
                    detail: format!("produced by {desc} together with tensors that were asked for, but never asked for itself"),
                });
            }
        }
        problems.sort_by(|a, b| {
            let (ka, na) = a.sort_key();
            let (kb, nb) = b.sort_key();
            ka.cmp(&kb).then_with(|| natural_cmp(na, nb))
        });
        problems
    }

    /// Fails with every problem at once (see [`CheckpointSource::problems`]), or does nothing.
    pub fn check(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Accounting {
                source_name: format!("checkpoint {}", self.dir.display()),
                problems,
            })
        }
    }
}
