//! What a forward pass captures besides its logits, chosen per call: hidden states, attention
//! probabilities, and the output of any site ([`Recorders`]), whichever type was built there.
//!
//! Nothing here is global: the selection is part of the call
//! ([`ForwardOptions`](crate::ForwardOptions)), the records are collected in the pass's own
//! [`PassContext`] and handed back with the forward output. Two threads running one model with
//! different recorders never see each other's records, and building a patched model changes
//! nothing about what a later one records.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use candle_core::Tensor;
use patch_core::{BuildReport, ObservedSite, SiteMatcher};

use crate::decoder::extensions::Extensions;
use crate::decoder::outputs::RouterOutput;
use crate::decoder::rope::RopeTables;
use crate::implementations::{AttentionImplementation, ExpertsImplementation, Implementations};
use crate::{Error, Result};

/// Which of a numbered list of outputs to keep (hidden states, attention probabilities).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Selection {
    /// None (the default: nothing is computed or kept).
    #[default]
    None,
    /// Every one.
    All,
    /// These indices; negative ones count from the end (`-1` is the last), as transformers'
    /// newer `output_hidden_states` accepts them.
    Only(Vec<isize>),
}

impl Selection {
    /// Which of `n` outputs are selected; an error naming `what` and the index for one out of
    /// range.
    pub fn resolve(&self, what: &str, n: usize) -> Result<Vec<bool>> {
        let mut keep = vec![false; n];
        match self {
            Selection::None => {}
            Selection::All => keep.iter_mut().for_each(|k| *k = true),
            Selection::Only(indices) => {
                for &i in indices {
                    let at = if i < 0 {
                        n.checked_sub(i.unsigned_abs())
                    } else {
                        Some(i as usize).filter(|&i| i < n)
                    };
                    let at = at.ok_or_else(|| {
                        Error::input(
                            what,
                            format!(
                                "index {i} is out of range: there are {n} (0..{n}, or -{n}..-1)"
                            ),
                        )
                    })?;
                    keep[at] = true;
                }
            }
        }
        Ok(keep)
    }

    /// Whether nothing is selected.
    pub fn is_none(&self) -> bool {
        match self {
            Selection::None => true,
            Selection::Only(indices) => indices.is_empty(),
            Selection::All => false,
        }
    }
}

/// Which sites to record, by site name or regex with the matching rules of patches (an exact
/// name, or a pattern matching anywhere in the name): at every module path such a site is
/// built at, whichever type was built there.
///
/// ```
/// use patchwork_models::decoder::Recorders;
/// let routers = Recorders::sites(["TopKRouter$"])?; // every family's router
/// assert!(!routers.is_empty());
/// assert!(Recorders::sites(["(unclosed"]).is_err());
/// # Ok::<(), patchwork_models::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Recorders {
    all: bool,
    keys: Vec<SiteMatcher>,
}

impl Recorders {
    /// Records nothing (the default).
    pub fn none() -> Self {
        Self::default()
    }

    /// Records every site.
    pub fn all() -> Self {
        Self {
            all: true,
            keys: Vec::new(),
        }
    }

    /// Records the sites `keys` match (site names or regexes); an error naming an invalid
    /// regex.
    pub fn sites<I, K>(keys: I) -> Result<Self>
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let keys = keys
            .into_iter()
            .map(SiteMatcher::new)
            .collect::<patch_core::Result<Vec<_>>>()?;
        Ok(Self { all: false, keys })
    }

    /// Whether nothing would be recorded.
    pub fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }

    /// Whether the site named `site` is recorded.
    pub fn selects(&self, site: &str) -> bool {
        self.all || self.keys.iter().any(|k| k.rule(site).is_some())
    }
}

/// One site's output, typed by its slot.
#[derive(Clone, Debug)]
pub enum Record {
    /// A tensor: attention, MLP, norm and experts outputs; a decoder layer's and a sparse
    /// block's hidden states.
    Tensor(Tensor),
    /// A router's output: logits, chosen experts and their weights.
    Router(RouterOutput),
    /// A rotary embedding's cos/sin tables.
    Rope(RopeTables),
}

/// A record and where it came from.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Module path (`model.layers.0.mlp.gate`).
    pub path: String,
    /// Site name (`Qwen3MoeTopKRouter`), whichever type was built there.
    pub site: &'static str,
    /// The output.
    pub record: Record,
}

/// The records of one forward pass, in the order the sites returned (children before their
/// parents).
#[derive(Clone, Debug, Default)]
pub struct Records {
    entries: Vec<Recorded>,
}

impl Records {
    /// Every record, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Recorded> {
        self.entries.iter()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The record of the module at `path` (its first call, for a module called more than once
    /// in a pass; the outermost module's, where two sites share a path, as a router and the
    /// projection of its weight do).
    pub fn get(&self, path: &str) -> Option<&Record> {
        self.at(path).next().map(|r| &r.record)
    }

    /// The record of site `site` at `path` (its first call).
    pub fn get_site(&self, path: &str, site: &str) -> Option<&Record> {
        self.at(path).find(|r| r.site == site).map(|r| &r.record)
    }

    /// Every record at `path`, outermost site first, each call in order.
    fn at(&self, path: &str) -> impl Iterator<Item = &Recorded> {
        let mut sites: Vec<&'static str> = Vec::new();
        // A site's record is pushed when its forward returns, so an inner one (the router's
        // projection) comes before the module it is called from; outermost first means the
        // last site to record first.
        for r in self.entries.iter().rev().filter(|r| r.path == path) {
            if !sites.contains(&r.site) {
                sites.push(r.site);
            }
        }
        let mut out: Vec<&Recorded> = Vec::new();
        for site in sites {
            out.extend(
                self.entries
                    .iter()
                    .filter(|r| r.path == path && r.site == site),
            );
        }
        out.into_iter()
    }

    /// The tensor recorded at `path`, if a site there records a tensor.
    pub fn tensor(&self, path: &str) -> Option<&Tensor> {
        self.at(path).find_map(|r| match &r.record {
            Record::Tensor(t) => Some(t),
            _ => None,
        })
    }

    /// The router output recorded at `path`, if a site there records one.
    pub fn router(&self, path: &str) -> Option<&RouterOutput> {
        self.at(path).find_map(|r| match &r.record {
            Record::Router(r) => Some(r),
            _ => None,
        })
    }

    /// The records of site `site`, in order.
    pub fn of_site<'a>(&'a self, site: &'a str) -> impl Iterator<Item = &'a Recorded> + 'a {
        self.entries.iter().filter(move |r| r.site == site)
    }
}

/// What every module receives for one forward pass: which outputs to capture and where the
/// captured ones go, and the attention and experts implementations the model computes with.
/// Built by [`CausalLM::forward_with`](crate::CausalLM::forward_with) from the call's options;
/// [`PassContext::default`] captures nothing and computes with the defaults (a module called
/// directly).
#[derive(Debug, Default)]
pub struct PassContext {
    implementations: Implementations,
    /// Whether the pass records the autograd graph (the model's weights are trainable).
    tracks_gradients: bool,
    /// By build-report index: whether that site's output is recorded.
    sites: Vec<bool>,
    /// By layer: whether its attention probabilities are kept.
    attentions: Vec<bool>,
    records: Mutex<Vec<Recorded>>,
    attention_weights: Mutex<BTreeMap<usize, Tensor>>,
    extensions: Extensions,
}

impl PassContext {
    /// A pass recording the sites of `report` that `recorders` select, and the attention
    /// probabilities of the layers `attentions` selects (by layer index).
    pub fn new(
        report: &BuildReport,
        recorders: &Recorders,
        attentions: Vec<bool>,
        implementations: &Implementations,
    ) -> Self {
        let sites = if recorders.is_empty() {
            Vec::new()
        } else {
            report
                .sites()
                .iter()
                .map(|s| recorders.selects(s.site))
                .collect()
        };
        Self {
            implementations: implementations.clone(),
            sites,
            attentions,
            ..Self::default()
        }
    }

    /// This pass recording the autograd graph (`true`: the model's weights are trainable) or
    /// not (the default): what decides, once per pass, whether an implementation that does not
    /// declare gradients gives way to `"eager"`. Whether each operation runs on the kernels or
    /// on candle's ops is decided by the operation itself ([`crate::ops`]), from its operands.
    pub fn with_gradients(mut self, tracks_gradients: bool) -> Self {
        self.tracks_gradients = tracks_gradients;
        self
    }

    /// This pass carrying the caller's `extensions` (what [`ForwardOptions::extensions`]
    /// holds), for the modules that read them ([`PassContext::extension`]).
    ///
    /// [`ForwardOptions::extensions`]: crate::ForwardOptions::extensions
    pub fn with_extensions(mut self, extensions: Extensions) -> Self {
        self.extensions = extensions;
        self
    }

    /// The caller's value of type `T` for this pass, if one was given ([`Extensions`]).
    pub fn extension<T: std::any::Any>(&self) -> Option<&T> {
        self.extensions.get::<T>()
    }

    /// Whether this pass records the autograd graph (see [`PassContext::with_gradients`]).
    pub fn tracks_gradients(&self) -> bool {
        self.tracks_gradients
    }

    /// The attention implementation the model computes with ([`crate::decoder::attend`] runs
    /// it, or `"eager"` where it cannot do what the pass needs).
    pub fn attention_implementation(&self) -> &std::sync::Arc<AttentionImplementation> {
        self.implementations.attention()
    }

    /// The routed-experts implementation the model computes with.
    pub fn experts_implementation(&self) -> &std::sync::Arc<ExpertsImplementation> {
        self.implementations.experts()
    }

    /// Whether this pass records the output of the module built at `site`.
    pub fn records(&self, site: &ObservedSite) -> bool {
        self.sites.get(site.index).copied().unwrap_or(false)
    }

    /// Records `record()` as the output of the module built at `site`, if this pass records
    /// that site (`record` is not called otherwise).
    pub fn record(&self, site: &ObservedSite, record: impl FnOnce() -> Record) {
        if self.sites.get(site.index).copied().unwrap_or(false) {
            self.records
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Recorded {
                    path: site.path.to_string(),
                    site: site.site,
                    record: record(),
                });
        }
    }

    /// Whether this pass keeps layer `layer`'s attention probabilities (what
    /// [`crate::decoder::attend`] checks before computing them).
    pub fn wants_attention_weights(&self, layer: usize) -> bool {
        self.attentions.get(layer).copied().unwrap_or(false)
    }

    /// Keeps layer `layer`'s attention probabilities `[batch, heads, seq, kv_len]`.
    pub fn record_attention_weights(&self, layer: usize, probs: Tensor) {
        self.attention_weights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(layer, probs);
    }

    /// The records and attention probabilities of the pass.
    pub fn into_captured(self) -> (Records, BTreeMap<usize, Tensor>) {
        (
            Records {
                entries: self
                    .records
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner),
            },
            self.attention_weights
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_resolve_negative_indices_and_name_bad_ones() {
        assert_eq!(Selection::None.resolve("x", 3).unwrap(), [false; 3]);
        assert_eq!(Selection::All.resolve("x", 2).unwrap(), [true; 2]);
        let s = Selection::Only(vec![0, -1]);
        assert_eq!(s.resolve("x", 4).unwrap(), [true, false, false, true]);
        let err = Selection::Only(vec![-5])
            .resolve("output_hidden_states", 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("output_hidden_states") && err.contains("-5"),
            "{err}"
        );
        let e = Selection::Only(vec![4])
            .resolve("x", 4)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("index 4 is out of range: there are 4"), "{e}");
    }
}
