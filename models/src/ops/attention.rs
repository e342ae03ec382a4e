//! Scaled dot-product attention with grouped-query heads, over a KV cache read in place.

use candle_core::{D, DType, Tensor};

use super::cpu::{CpuSlice, cpu_tensor};
use super::{cpu_f32, softmax_last_dim, tracks_gradients};
use crate::kernels::Isa;
use crate::kernels::attention::AttentionShape;

/// The keys and values an attention reads: `[batch, kv_heads, capacity, head_dim]` each, of
/// which the first `len` positions are filled (a KV cache's buffers, read in place), or a
/// pass's own keys and values (`capacity == len`).
#[derive(Clone, Copy, Debug)]
pub struct KeyValues<'a> {
    /// Keys, `[batch, kv_heads, capacity, head_dim]`.
    pub keys: &'a Tensor,
    /// Values, `[batch, kv_heads, capacity, v_head_dim]`.
    pub values: &'a Tensor,
    /// Filled positions.
    pub len: usize,
}

impl KeyValues<'_> {
    /// The filled positions, as views.
    fn filled(&self) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.keys.narrow(2, 0, self.len)?,
            self.values.narrow(2, 0, self.len)?,
        ))
    }
}

/// `softmax(q k^T * scale + bias) v` for rotated `q` `[batch, seq, heads, head_dim]` (the
/// projection's layout) over `kv`, with `bias` `[batch, 1, seq, kv.len]` (causal, padding and
/// window masking, additive); returns `[batch, seq, heads * v_head_dim]` and, when
/// `want_weights`, the post-softmax probabilities `[batch, heads, seq, kv.len]`.
///
/// Kernel path (no probabilities asked for, nothing tracking gradients, CPU float32):
/// [`crate::kernels::attention::attention`], reading the buffers in place. Otherwise
/// [`eager_attention`] on candle's ops.
pub fn attention(
    q: &Tensor,
    kv: &KeyValues<'_>,
    bias: Option<&Tensor>,
    scale: f64,
    want_weights: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let (b, t, heads, d) = q.dims4()?;
    let (kb, kv_heads, capacity, kd) = kv.keys.dims4()?;
    let vd = kv.values.dim(3)?;
    if kb != b || kd != d || kv.len > capacity || kv.values.dims()[..3] != kv.keys.dims()[..3] {
        candle_core::bail!(
            "attention: keys {:?} and values {:?} ({} filled) do not fit queries {:?}",
            kv.keys.dims(),
            kv.values.dims(),
            kv.len,
            q.dims()
        );
    }
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        candle_core::bail!(
            "attention: {heads} query heads cannot share {kv_heads} key/value heads"
        );
    }
    if let Some(m) = bias
        && m.dims() != [b, 1, t, kv.len]
    {
        candle_core::bail!(
            "attention: mask {:?}, expected [{b}, 1, {t}, {}]",
            m.dims(),
            kv.len
        );
    }
    let operands: Vec<&Tensor> = [q, kv.keys, kv.values].into_iter().chain(bias).collect();
    let fits =
        cpu_f32(q) && cpu_f32(kv.keys) && cpu_f32(kv.values) && vd == d && bias.is_none_or(cpu_f32);
    if fits && !want_weights && !tracks_gradients(&operands) {
        let shape = AttentionShape {
            batch: b,
            q_len: t,
            heads,
            kv_heads,
            head_dim: d,
            kv_len: kv.len,
            kv_capacity: capacity,
        };
        let (q, keys, values) = (
            q.contiguous()?,
            kv.keys.contiguous()?,
            kv.values.contiguous()?,
        );
        let bias = bias.map(Tensor::contiguous).transpose()?;
        let (rq, rk, rv) = (CpuSlice::of(&q), CpuSlice::of(&keys), CpuSlice::of(&values));
        let rb = bias.as_ref().and_then(CpuSlice::of);
        let bs = rb.as_ref().and_then(CpuSlice::get::<f32>);
        if let Some(qs) = rq.as_ref().and_then(CpuSlice::get::<f32>)
            && let Some(ks) = rk.as_ref().and_then(CpuSlice::get::<f32>)
            && let Some(vs) = rv.as_ref().and_then(CpuSlice::get::<f32>)
            && (bias.is_none() || bs.is_some())
        {
            let mut out = vec![0f32; qs.len()];
            crate::kernels::attention::attention(
                Isa::detect(),
                &shape,
                qs,
                ks,
                vs,
                bs,
                scale as f32,
                &mut out,
            );
            return Ok((cpu_tensor(out, (b, t, heads * d))?, None));
        }
    }
    let (k, v) = kv.filled()?;
    let (y, probs) = eager_attention(&q.transpose(1, 2)?, &k, &v, bias, scale, want_weights)?;
    Ok((y.transpose(1, 2)?.reshape((b, t, heads * vd))?, probs))
}

/// `softmax(q k^T * scale + bias) v` on candle's ops (differentiable, any device and dtype)
/// for `q` `[batch, heads, seq, head_dim]` and `k`, `v` `[batch, kv_heads, kv_len, head_dim]`,
/// with `bias` `[batch, 1, seq, kv_len]`; returns `[batch, heads, seq, v_head_dim]` and, when
/// `want_weights`, the probabilities `[batch, heads, seq, kv_len]`.
///
/// Grouped-query attention without repeating keys/values: consecutive query heads share a
/// key/value head, so the `heads / kv_heads` query heads of a group are folded into the row
/// dimension of one matmul per key/value head (a free reshape of contiguous `q`). `k` and `v`
/// may be strided views (a KV cache narrowed to its filled length): nothing is copied.
pub fn eager_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
    want_weights: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let (b, heads, t, d) = q.dims4()?;
    let (_, kv_heads, s, _) = k.dims4()?;
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        candle_core::bail!(
            "attention: {heads} query heads cannot share {kv_heads} key/value heads"
        );
    }
    let groups = heads / kv_heads;
    let q = (q.contiguous()? * scale)?.reshape((b, kv_heads, groups * t, d))?;
    let scores = q.matmul(&k.t()?)?;
    let scores = match bias {
        Some(bias) => scores
            .reshape((b, kv_heads, groups, t, s))?
            .broadcast_add(&bias.to_dtype(scores.dtype())?.unsqueeze(1)?)?
            .reshape((b, kv_heads, groups * t, s))?,
        None => scores,
    };
    // Softmax in float32 for half-precision inputs, as transformers' eager attention does.
    let probs = if scores.dtype() == DType::F32 {
        softmax_last_dim(&scores)?
    } else {
        softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(scores.dtype())?
    };
    let y = probs
        .matmul(&v.contiguous()?)?
        .reshape((b, heads, t, v.dim(D::Minus1)?))?;
    let weights = if want_weights {
        Some(probs.reshape((b, heads, t, s))?)
    } else {
        None
    };
    Ok((y, weights))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::decoder::AttentionKind;
    use crate::decoder::mask::attention_bias;
    use crate::ops::max_diff;

    #[test]
    fn kernel_and_eager_paths_agree_with_and_without_weights_and_gradients() {
        let dev = Device::Cpu;
        let (b, t, heads, kv_heads, d) = (2, 5, 4, 2, 8);
        let q = Tensor::randn(0f32, 1.0, (b, t, heads, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, kv_heads, t, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, kv_heads, t, d), &dev).unwrap();
        let mask = [1u8, 1, 1, 1, 1, 0, 0, 1, 1, 1];
        let bias = attention_bias(
            b,
            0,
            t,
            AttentionKind::Full,
            |r| &mask[r * t..(r + 1) * t],
            DType::F32,
            &dev,
        )
        .unwrap()
        .unwrap();
        let kv = KeyValues {
            keys: &k,
            values: &v,
            len: t,
        };
        let (fast, none) = attention(&q, &kv, Some(&bias), 0.3, false).unwrap();
        assert!(none.is_none() && !fast.track_op());
        let (eager, probs) = attention(&q, &kv, Some(&bias), 0.3, true).unwrap();
        assert!(max_diff(&fast, &eager) < 1e-5);
        let probs = probs.unwrap();
        assert_eq!(probs.dims(), &[b, heads, t, t]);
        // Rows sum to one; masked keys get nothing.
        let sums = probs
            .sum(3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
        let p: Vec<f32> = probs.flatten_all().unwrap().to_vec1().unwrap();
        // Row 1, head 0, query 4 must not see the padding keys 0 and 1.
        let at = |h: usize, qi: usize, s: usize| p[((heads + h) * t + qi) * t + s];
        assert_eq!(at(0, 4, 0), 0.0);
        assert_eq!(at(0, 4, 1), 0.0);
        let qv = Var::from_tensor(&q).unwrap();
        let (graph, _) = attention(qv.as_tensor(), &kv, Some(&bias), 0.3, false).unwrap();
        assert!(graph.track_op());
        assert!(max_diff(&fast, &graph) < 1e-5);
        let grads = graph.sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(qv.as_tensor()).unwrap().dims(), q.dims());
    }
}
