//! Sibling projections of one input computed together (q/k/v, gate/up): one product over
//! their stacked rows when nothing replaced any of them, one product each otherwise.

use candle_core::Tensor;
use patch_core::{Builder, Module, Result};

use crate::decoder::capture::{PassContext, Record};
use crate::decoder::linear::Linear;
use crate::decoder::projection::Projection;

/// Projections of one input, each a site at its own path (`q_proj`, `k_proj`, `v_proj`),
/// computed as one product when every part is the plain [`Linear`] (nothing replaced it): the
/// fused weight is then the only copy, each part's weight a view of its rows, and the
/// parameter store records those views under the parts' own names, so saving writes the
/// checkpoint's layout. When any part was replaced (quantized, given an adapter, sharded), each
/// part computes on its own, so a rule on `q_proj` alone works.
pub struct FusedProjections {
    parts: Vec<Box<dyn Projection>>,
    fused: Option<Linear>,
}

impl FusedProjections {
    /// Fuses `parts`, built at `b.pp(names[i])`, when they are all plain float layers of one
    /// weight dtype with biases on all or none. From trainable weights the fused layer reads
    /// the parts' variables at each call ([`Linear::from_rows`]).
    pub fn new(b: &Builder, names: &[&str], mut parts: Vec<Box<dyn Projection>>) -> Result<Self> {
        let linears: Option<Vec<&Linear>> = parts.iter().map(|p| p.linear()).collect();
        let Some(linears) = linears.filter(|l| fusable(l)) else {
            return Ok(Self { parts, fused: None });
        };
        if b.weights().is_trainable() {
            let rows = linears.into_iter().cloned().collect();
            return Ok(Self {
                fused: Some(Linear::from_rows(rows)),
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
            if let Some(linear) = part.linear_mut() {
                linear.set(w, bv);
            }
            row += rows;
        }
        Ok(Self {
            parts,
            fused: Some(Linear::new(weight, bias)),
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
            fused: Some(fused),
        })
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Box<dyn Projection>] {
        &self.parts
    }

    /// The fused layer, when the parts are computed as one product.
    pub fn fused(&self) -> Option<&Linear> {
        self.fused.as_ref()
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
