//! "Does my replacement compute the same thing?": a patched model and its original run on the
//! same input with every site recorded; per module path, the largest difference of the site's
//! output, and where the first divergence above a tolerance appears.

use std::fmt;

use candle_core::{DType, Tensor};

use crate::decoder::{Record, Recorders};
use crate::{CausalLM, ForwardOptions, Result};

/// How one site's output differs between the two models.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteDifference {
    /// Module path.
    pub path: String,
    /// Site name.
    pub site: &'static str,
    /// `max |patched - original|` over the output (a router's: its logits and weights);
    /// infinite when the shapes differ.
    pub max_abs_diff: f32,
    /// `max |original|`: the scale the tolerance is relative to.
    pub scale: f32,
    /// A router chose other experts.
    pub routing_differs: bool,
}

/// The result of [`compare_models`].
#[derive(Clone, Debug)]
pub struct Comparison {
    /// Every site both models recorded, in the order the original ran them (children before
    /// their parents).
    pub sites: Vec<SiteDifference>,
    /// Paths the original recorded and the patched model did not (a replacement that builds
    /// no sub-site there).
    pub missing: Vec<String>,
    /// Paths only the patched model recorded.
    pub extra: Vec<String>,
    /// `max |patched - original|` of the logits.
    pub logits_max_abs_diff: f32,
    /// The tolerance: a site diverges when its difference exceeds
    /// `tolerance * max(1, scale)`, or its routing differs.
    pub tolerance: f32,
}

impl Comparison {
    /// Whether `d` is above the tolerance.
    pub fn diverges(&self, d: &SiteDifference) -> bool {
        let within = d.max_abs_diff <= self.tolerance * d.scale.max(1.0);
        d.routing_differs || !within // a NaN difference is never within
    }

    /// The first site, in execution order, whose output diverges: where the replacement (or
    /// what feeds it) starts computing something else.
    pub fn first_divergence(&self) -> Option<&SiteDifference> {
        self.sites.iter().find(|d| self.diverges(d))
    }

    /// Whether no site diverges.
    pub fn is_match(&self) -> bool {
        self.first_divergence().is_none()
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self
            .sites
            .iter()
            .map(|d| d.path.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let sw = self
            .sites
            .iter()
            .map(|d| d.site.len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(
            f,
            "{:<w$}  {:<sw$}  {:>12}  {:>10}",
            "path", "site", "max |diff|", "scale"
        )?;
        for d in &self.sites {
            let flag = if d.routing_differs {
                "  routing differs"
            } else if self.diverges(d) {
                "  diverges"
            } else {
                ""
            };
            writeln!(
                f,
                "{:<w$}  {:<sw$}  {:>12.3e}  {:>10.3e}{flag}",
                d.path, d.site, d.max_abs_diff, d.scale
            )?;
        }
        for p in &self.missing {
            writeln!(f, "{p}: recorded by the original only")?;
        }
        for p in &self.extra {
            writeln!(f, "{p}: recorded by the patched model only")?;
        }
        writeln!(f, "logits: max |diff| = {:.3e}", self.logits_max_abs_diff)?;
        match self.first_divergence() {
            Some(d) => write!(
                f,
                "first divergence above {:e}: {} ({})",
                self.tolerance, d.path, d.site
            ),
            None => write!(f, "every site within {:e}", self.tolerance),
        }
    }
}

/// `(max |a - b|, max |b|)`, infinite for different shapes and wherever either side holds a
/// NaN (or an infinity meets a finite value).
fn difference(a: &Tensor, b: &Tensor) -> Result<(f32, f32)> {
    let b32 = b.detach().to_dtype(DType::F32)?;
    let scale = max_abs(&b32)?;
    if a.dims() != b.dims() {
        return Ok((f32::INFINITY, scale));
    }
    let d = max_abs(&(a.detach().to_dtype(DType::F32)? - b32)?)?;
    Ok((d, scale))
}

/// `max |t_i|`, infinite when an entry is NaN or infinite (a reduction with `f32::max` would
/// skip a NaN).
fn max_abs(t: &Tensor) -> Result<f32> {
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(values.iter().fold(0f32, |m, &x| {
        if x.is_finite() {
            m.max(x.abs())
        } else {
            f32::INFINITY
        }
    }))
}

/// Runs `patched` and `original` on `input_ids` (and `attention_mask`) with every site
/// recorded, and compares each site's output at each module path both built; see
/// [`Comparison`].
pub fn compare_models(
    patched: &CausalLM,
    original: &CausalLM,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    tolerance: f32,
) -> Result<Comparison> {
    let options = ForwardOptions {
        recorders: Recorders::all(),
        ..ForwardOptions::default()
    };
    let a = patched.forward_with(input_ids, attention_mask, None, &options)?;
    let b = original.forward_with(input_ids, attention_mask, None, &options)?;
    let mut sites = Vec::new();
    let mut missing = Vec::new();
    for r in b.records.iter() {
        let Some(other) = a.records.get_site(&r.path, r.site) else {
            missing.push(r.path.clone());
            continue;
        };
        let (max_abs_diff, scale, routing_differs) = match (other, &r.record) {
            (Record::Tensor(x), Record::Tensor(y)) => {
                let (d, s) = difference(x, y)?;
                (d, s, false)
            }
            (Record::Router(x), Record::Router(y)) => {
                let (dl, sl) = difference(&x.logits, &y.logits)?;
                let (dw, _) = difference(&x.weights, &y.weights)?;
                let ids = |t: &Tensor| -> Result<Vec<i64>> {
                    Ok(t.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?)
                };
                (dl.max(dw), sl, ids(&x.indices)? != ids(&y.indices)?)
            }
            (Record::Rope(x), Record::Rope(y)) => {
                let (dc, sc) = difference(&x.cos, &y.cos)?;
                let (ds, _) = difference(&x.sin, &y.sin)?;
                (dc.max(ds), sc, false)
            }
            _ => (f32::INFINITY, 0.0, false),
        };
        sites.push(SiteDifference {
            path: r.path.clone(),
            site: r.site,
            max_abs_diff,
            scale,
            routing_differs,
        });
    }
    let extra = a
        .records
        .iter()
        .filter(|r| b.records.get_site(&r.path, r.site).is_none())
        .map(|r| r.path.clone())
        .collect();
    let logits_max_abs_diff = match (&a.logits, &b.logits) {
        (Some(x), Some(y)) => difference(x, y)?.0,
        _ => f32::INFINITY,
    };
    Ok(Comparison {
        sites,
        missing,
        extra,
        logits_max_abs_diff,
        tolerance,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::difference;

    #[test]
    fn a_nan_anywhere_is_an_infinite_difference() {
        let dev = Device::Cpu;
        let ours = Tensor::new(&[1f32, f32::NAN, 3.0], &dev).unwrap();
        let reference = Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap();
        assert_eq!(difference(&ours, &reference).unwrap().0, f32::INFINITY);
        assert_eq!(
            difference(&reference, &ours).unwrap(),
            (f32::INFINITY, f32::INFINITY)
        );
        let close = Tensor::new(&[1f32, 2.5, 3.0], &dev).unwrap();
        assert_eq!(difference(&close, &reference).unwrap(), (0.5, 3.0));
    }
}
