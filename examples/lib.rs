#![warn(missing_docs)]
//! Replacement layers shared by the example programs (and their tests): the ones the upstream
//! page writes in its complete example, in Rust.
//!
//! - [`FusedQkvAttention`]: one `qkv_proj` instead of `q_proj`/`k_proj`/`v_proj`, carrying the
//!   transform that concatenates the checkpoint's three projections (and splits them back on
//!   save). It fills the shared attention slot, so it serves every family (biases and head
//!   norms when the config has them, grouped-query attention). The models crate ships it.
//! - [`ModuleListExperts`]: one MLP per expert, loaded straight from the per-expert checkpoint
//!   keys (what a quantizer that only understands per-expert linears needs).

use candle_core::{Result, Tensor};
use patch_core::{Build, Builder, Module};
use patchwork_models::decoder::{Children, Experts, GatedMlp, MlpArgs, MoeArgs, PassContext};
use patchwork_models::ops::tokens_per_expert;

/// Attention with one fused `qkv_proj`, carrying the q/k/v concatenation it needs: the
/// models crate ships it (`patchwork_models::replacements`), written as a user would write it.
pub use patchwork_models::replacements::FusedQkvAttention;

/// Routed experts as a list of MLPs (`experts.{i}.gate_proj` ...), upstream's
/// `ModuleListExperts`: each expert chosen by some token runs once over its tokens.
pub struct ModuleListExperts {
    /// One gated MLP per expert, loaded from the per-expert checkpoint keys as they are.
    pub experts: Vec<GatedMlp>,
}

impl Build for ModuleListExperts {
    type Slot = dyn Experts;
    fn build(b: &Builder, args: MoeArgs<'_>) -> patch_core::Result<Box<dyn Experts>> {
        let moe = args.config.moe()?;
        let mlp = MlpArgs::expert(args.config)?;
        let experts = (0..moe.num_experts).map(|i| GatedMlp::load(&b.pp(i.to_string()), mlp));
        Ok(Box::new(Self {
            experts: experts.collect::<patch_core::Result<_>>()?,
        }))
    }

    /// The experts by index (`mlp.experts.3`), so `named_modules` reaches their projections.
    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        for (i, expert) in self.experts.iter().enumerate() {
            Children::children(expert, &mut |name, child| {
                visit(&format!("{i}.{name}"), child)
            });
        }
    }
}

impl Experts for ModuleListExperts {
    fn forward(&self, x: &Tensor, ids: &Tensor, w: &Tensor, pass: &PassContext) -> Result<Tensor> {
        let mut out = x.zeros_like()?;
        for group in tokens_per_expert(ids, w, self.experts.len())? {
            let y =
                self.experts[group.expert].forward_with(&x.index_select(&group.rows, 0)?, pass)?;
            out = out.index_add(&group.rows, &y.broadcast_mul(&group.weights)?, 0)?;
        }
        Ok(out)
    }
}

/// A checkpoint's tensors by key: dtype, shape and raw bytes.
pub type TensorBytes = std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

/// Every tensor of the checkpoint folder `dir` (all its `model*.safetensors` files).
pub fn checkpoint_tensors(
    dir: &std::path::Path,
) -> std::result::Result<TensorBytes, Box<dyn std::error::Error>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("model") && name.ends_with(".safetensors") {
            let bytes = std::fs::read(&path)?;
            let st = safetensors::SafeTensors::deserialize(&bytes)?;
            for (key, view) in st.tensors() {
                out.insert(
                    key,
                    (
                        format!("{:?}", view.dtype()),
                        view.shape().to_vec(),
                        view.data().to_vec(),
                    ),
                );
            }
        }
    }
    Ok(out)
}

/// Checks that the checkpoint folder `saved` holds exactly the tensors of `original`, bit for
/// bit (same keys, dtypes, shapes and bytes); returns how many, or what differs.
pub fn same_checkpoint_tensors(
    original: &std::path::Path,
    saved: &std::path::Path,
) -> std::result::Result<usize, Box<dyn std::error::Error>> {
    let a = checkpoint_tensors(original)?;
    let b = checkpoint_tensors(saved)?;
    for key in a.keys().chain(b.keys()) {
        match (a.get(key), b.get(key)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(_), Some(y)) => {
                return Err(
                    format!("{key}: saved {} {:?} differs from the original", y.0, y.1).into(),
                );
            }
            (Some(_), None) => return Err(format!("{key} was not saved").into()),
            (None, _) => return Err(format!("{key} was saved but is not in the original").into()),
        }
    }
    Ok(a.len())
}
