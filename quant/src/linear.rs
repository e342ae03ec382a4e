//! `QuantizedLinear`: a projection whose weight is held in a quantized format, and how the
//! topology's replacement builds one at a projection site.

use candle_core::Tensor;
use candle_nn::Init;
use patch_core::{Build, Builder, Result};
use patchwork_models::decoder::{PassContext, Projection, ProjectionArgs, StackedProjections};

use crate::RowQuantizer;
use crate::weight::QuantizedWeight;
use crate::{Format, Topology};

/// `x W^T + b` with `W` quantized ([`QuantizedWeight`]) and the bias kept float: what a
/// projection site builds where a topology gives its path a format.
#[derive(Clone, Debug)]
pub struct QuantizedLinear {
    weight: QuantizedWeight,
    bias: Option<Tensor>,
}

impl QuantizedLinear {
    /// A layer from a quantized weight and an optional float bias `[out]`.
    pub fn new(weight: QuantizedWeight, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight.
    pub fn weight(&self) -> &QuantizedWeight {
        &self.weight
    }

    /// The bias.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The format the weight is held in.
    pub fn format(&self) -> Format {
        self.weight.format()
    }

    /// Builds the projection `args` describes at `b`'s path in the format `topology` gives
    /// that path, falling back as llama.cpp does when the rows do not fit, or what the site
    /// builds without this replacement where the topology says float
    /// ([`Builder::build_original`]). The float weight is requested unkept
    /// ([`patch_core::checkpoint::Weights::get_unkept`]): once quantized, its values are
    /// freed, and saving reads the checkpoint's again. Why each format was chosen goes to the
    /// build report ([`Builder::describe`]).
    pub fn build_with(
        topology: &Topology,
        b: &Builder,
        args: ProjectionArgs<'_>,
    ) -> Result<Box<dyn Projection>> {
        let choice = topology.choose(b.path(), args.in_features);
        b.describe(&choice.reason);
        let Some(format) = choice.format else {
            return b.build_original(args);
        };
        if b.weights().is_trainable() {
            return Err(patch_core::Error::other(format!(
                "{format} at {:?}: quantized weights are for inference; load without trainable(), or leave this path float (--quantize-rule 'PATH=none')",
                b.path()
            )));
        }
        let shape = (args.out_features, args.in_features);
        let quantized = |e: candle_core::Error| {
            patch_core::Error::other(format!("{format} at {:?}: {e}", b.path()))
        };
        let weight = match args.tied {
            Some(embedding) => {
                let table = embedding.table().ok_or_else(|| {
                    patch_core::Error::other(format!(
                        "{format} at {:?}: the tied token embedding gives no float table to quantize",
                        b.path()
                    ))
                })?;
                QuantizedWeight::quantize(&table, format).map_err(quantized)?
            }
            None => {
                let init = Init::Randn {
                    mean: 0.0,
                    stdev: args.config.initializer_range,
                };
                // Quantized as the rows are read: the float weight is never whole in memory.
                let (rows, cols) = shape;
                let mut q = RowQuantizer::new(format, rows, cols).map_err(quantized)?;
                b.weights()
                    .get_unkept_chunks(
                        shape,
                        "weight",
                        init,
                        RowQuantizer::chunk_rows(cols),
                        &mut |chunk| Ok(q.push(&chunk)?),
                    )
                    .map_err(|e| {
                        patch_core::Error::other(format!("{format} at {:?}: {e}", b.path()))
                    })?;
                q.finish().map_err(quantized)?
            }
        };
        let bias = if args.bias && args.tied.is_none() {
            Some(b.get_with_init(args.out_features, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Box::new(Self::new(weight, bias)))
    }
}

impl Build for QuantizedLinear {
    type Slot = dyn Projection;

    /// Built alone (registered by type, not through a topology): every projection in Q8_0.
    fn build(b: &Builder, args: ProjectionArgs<'_>) -> Result<Box<dyn Projection>> {
        Self::build_with(&Topology::new(Some(Format::Q8_0)), b, args)
    }
}

impl Projection for QuantizedLinear {
    fn forward(&self, x: &Tensor, _: &PassContext) -> candle_core::Result<Tensor> {
        self.weight.forward(x, self.bias.as_ref())
    }

    fn in_features(&self) -> usize {
        self.weight.dims().1
    }

    fn out_features(&self) -> usize {
        self.weight.dims().0
    }

    /// Siblings that are all `QuantizedLinear`s of this format and width, with biases on all
    /// or none, computed in one pass over their weights (shared, not copied).
    fn stack_with(&self, rest: &[&dyn Projection]) -> Option<Box<dyn StackedProjections>> {
        let mut parts = vec![self];
        for p in rest {
            parts.push(p.as_any().downcast_ref::<QuantizedLinear>()?);
        }
        let alike = |p: &&QuantizedLinear| {
            p.weight.format() == self.weight.format()
                && p.weight.dims().1 == self.weight.dims().1
                && p.bias.is_some() == self.bias.is_some()
        };
        if !parts.iter().all(alike) {
            return None;
        }
        let bias = match &self.bias {
            Some(_) => {
                let biases: Vec<&Tensor> = parts.iter().filter_map(|p| p.bias.as_ref()).collect();
                Some(Tensor::cat(&biases, 0).ok()?)
            }
            None => None,
        };
        Some(Box::new(StackedQuantized {
            weights: parts.iter().map(|p| p.weight.clone()).collect(),
            bias,
        }))
    }
}

/// Sibling quantized projections computed together ([`QuantizedWeight::forward_many`]).
struct StackedQuantized {
    weights: Vec<QuantizedWeight>,
    bias: Option<Tensor>,
}

impl StackedProjections for StackedQuantized {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let parts: Vec<&QuantizedWeight> = self.weights.iter().collect();
        QuantizedWeight::forward_many(&parts, x, self.bias.as_ref())
    }
}
