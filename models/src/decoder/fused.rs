//! Sibling projections of one input computed together (q/k/v, gate/up): one product over
//! their stacked rows when nothing replaced any of them, one pass when their type stacks them
//! ([`Projection::stack_with`]: quantized ones of one format), one product each otherwise.

use candle_core::Tensor;
use patch_core::{Builder, Module, Result};

use crate::decoder::capture::{PassContext, Record};
use crate::decoder::linear::Linear;
use crate::decoder::projection::{Projection, StackedProjections};

/// Projections of one input, each a site at its own path (`q_proj`, `k_proj`, `v_proj`),
/// computed as one product when every part is the plain [`Linear`] (nothing replaced it): the
/// fused weight is then the only copy, each part's weight a view of its rows, and the
/// parameter store records those views under the parts' own names, so saving writes the
/// checkpoint's layout. When the parts were replaced by a type that stacks its own kind
/// ([`Projection::stack_with`]: quantized projections of one format), they are computed in one
/// pass over their shared weights. Otherwise (a rule on `q_proj` alone, an adapter, a mix of
/// formats) each part computes on its own.
pub struct FusedProjections {
    parts: Vec<Box<dyn Projection>>,
    fused: Option<Fused>,
}

/// How the parts compute together.
enum Fused {
    /// One float layer over the stacked rows (the parts' weights are views of it).
    Float(Linear),
    /// What the parts' type stacked.
    Stacked(Box<dyn StackedProjections>),
}

impl Fused {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Fused::Float(l) => l.forward(x),
            Fused::Stacked(s) => s.forward(x),
        }
    }
}

impl FusedProjections {
    /// Fuses `parts`, built at `b.pp(names[i])`, when they are all plain float layers of one
    /// weight dtype with biases on all or none. From trainable weights the fused layer reads
    /// the parts' variables at each call ([`Linear::from_rows`]).
    pub fn new(b: &Builder, names: &[&str], mut parts: Vec<Box<dyn Projection>>) -> Result<Self> {
        // The site's own float layer (an observing wrapper hands its inner module's `as_any`).
        let linears: Option<Vec<&Linear>> = parts
            .iter()
            .map(|p| p.as_any().downcast_ref::<Linear>())
            .collect();
        let Some(linears) = linears.filter(|l| fusable(l)) else {
            let stacked = match parts.split_first() {
                Some((first, rest)) => {
                    let rest: Vec<&dyn Projection> = rest.iter().map(|p| &**p).collect();
                    first.stack_with(&rest).map(Fused::Stacked)
                }
                None => None,
            };
            return Ok(Self {
                parts,
                fused: stacked,
            });
        };
        if b.weights().is_trainable() {
            let rows = linears.into_iter().cloned().collect();
            return Ok(Self {
                fused: Some(Fused::Float(Linear::from_rows(rows))),
                parts,
            });
        }
        let err = patch_core::Error::other;
        let weights = linears
            .iter()
            .map(|l| l.weight())
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(err)?;
        let weight = Tensor::cat(&weights, 0).map_err(err)?;
        let biases = linears
            .iter()
            .filter_map(|l| l.bias().transpose())
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(err)?;
        let bias = if biases.is_empty() {
            None
        } else {
            Some(Tensor::cat(&biases, 0).map_err(err)?)
        };
        drop(weights);
        let params = b.weights().params();
        let mut row = 0;
        for (part, name) in parts.iter_mut().zip(names) {
            let rows = part.out_features();
            let view = |t: &Tensor| t.narrow(0, row, rows).map_err(err);
            let w = view(&weight)?;
            let path = b.pp(name);
            params.set(&format!("{}.weight", path.path()), w.clone());
            let bv = match &bias {
                Some(fb) => {
                    let v = view(fb)?;
                    params.set(&format!("{}.bias", path.path()), v.clone());
                    Some(v)
                }
                None => None,
            };
            if let Some(linear) = part.as_any_mut().downcast_mut::<Linear>() {
                linear.set(w, bv);
            }
            row += rows;
        }
        Ok(Self {
            parts,
            fused: Some(Fused::Float(Linear::new(weight, bias))),
        })
    }

    /// Projections already fused into `fused` (whose rows are the parts', in order, of
    /// `widths` rows each): the parts become views of its rows, not sites.
    pub fn from_fused(fused: Linear, widths: &[usize]) -> candle_core::Result<Self> {
        let (weight, bias) = (fused.weight()?, fused.bias()?);
        let mut parts: Vec<Box<dyn Projection>> = Vec::with_capacity(widths.len());
        let mut row = 0;
        for &rows in widths {
            parts.push(Box::new(Linear::new(
                weight.narrow(0, row, rows)?,
                bias.as_ref().map(|b| b.narrow(0, row, rows)).transpose()?,
            )));
            row += rows;
        }
        Ok(Self {
            parts,
            fused: Some(Fused::Float(fused)),
        })
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Box<dyn Projection>] {
        &self.parts
    }

    /// The fused float layer, when the parts are plain float layers computed as one product.
    pub fn fused(&self) -> Option<&Linear> {
        match &self.fused {
            Some(Fused::Float(l)) => Some(l),
            _ => None,
        }
    }

    /// Whether the parts are computed together (one float product, or stacked by their type).
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// Each part's output for `x`, in order; a part built as a site and recorded by the pass
    /// gets its output recorded whether it was computed fused or not.
    pub fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Vec<Tensor>> {
        match &self.fused {
            Some(fused) => {
                let y = fused.forward(x)?;
                let last = y.rank().saturating_sub(1);
                let mut out = Vec::with_capacity(self.parts.len());
                let mut col = 0;
                for part in &self.parts {
                    let width = part.out_features();
                    out.push(y.narrow(last, col, width)?);
                    col += width;
                }
                self.record_parts(&out, pass);
                Ok(out)
            }
            None => self.parts.iter().map(|p| p.forward(x, pass)).collect(),
        }
    }

    /// The parts' outputs for `x` side by side along the last dimension (gate then up): the
    /// fused product itself, or the parts' products concatenated.
    pub fn forward_stacked(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        match &self.fused {
            Some(fused) => {
                let y = fused.forward(x)?;
                if self
                    .parts
                    .iter()
                    .any(|p| p.observed_site().is_some_and(|s| pass.records(s)))
                {
                    let last = y.rank().saturating_sub(1);
                    let mut pieces = Vec::with_capacity(self.parts.len());
                    let mut col = 0;
                    for part in &self.parts {
                        pieces.push(y.narrow(last, col, part.out_features())?);
                        col += part.out_features();
                    }
                    self.record_parts(&pieces, pass);
                }
                Ok(y)
            }
            None => {
                let outs = self.forward(x, pass)?;
                Tensor::cat(&outs, candle_core::D::Minus1)
            }
        }
    }

    /// Records each part's output computed by the fused product, for the parts the pass
    /// records (what the part's own forward would have recorded).
    fn record_parts(&self, outputs: &[Tensor], pass: &PassContext) {
        for (part, out) in self.parts.iter().zip(outputs) {
            if let Some(site) = part.observed_site() {
                pass.record(site, || Record::Tensor(out.clone()));
            }
        }
    }

    /// Visits the parts under `names`.
    pub fn children<'a>(&'a self, names: &[&str], visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        for (part, name) in self.parts.iter().zip(names) {
            visit(name, &**part);
        }
    }
}

/// Whether float layers can be stacked into one: one weight dtype, and a bias on all or none.
fn fusable(parts: &[&Linear]) -> bool {
    let Some(first) = parts.first() else {
        return false;
    };
    let dtype = first.weight_dtype();
    let biased = |l: &Linear| l.bias().map(|b| b.is_some()).unwrap_or(false);
    parts
        .iter()
        .all(|l| l.weight_dtype() == dtype && biased(l) == biased(first))
}
