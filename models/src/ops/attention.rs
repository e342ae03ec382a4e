//! Scaled dot-product attention with grouped-query heads, over a KV cache read in place.

use candle_core::{D, DType, Tensor};

use super::cpu::{CpuSlice, cpu_tensor};
use super::mask::AttentionMask;
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

/// `softmax(q k^T * scale + mask) v` for rotated `q` `[batch, seq, heads, head_dim]` (the
/// projection's layout) over `kv`, masked by `mask` (causal, padding, window; `None`: every
/// query sees every key); returns `[batch, seq, heads * v_head_dim]` and, when
/// `want_weights`, the post-softmax probabilities `[batch, heads, seq, kv.len]`.
///
/// Kernel path (no probabilities asked for, nothing tracking gradients, CPU float32):
/// [`crate::kernels::attention::attention`], reading the buffers in place and the mask as a
/// description. Otherwise [`eager_attention`] on candle's ops.
pub fn attention(
    q: &Tensor,
    kv: &KeyValues<'_>,
    mask: Option<&AttentionMask>,
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
    check_mask(mask, b, t, kv.len)?;
    let operands = [q, kv.keys, kv.values];
    let fits = cpu_f32(q) && cpu_f32(kv.keys) && cpu_f32(kv.values) && vd == d;
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
        let (rq, rk, rv) = (CpuSlice::of(&q), CpuSlice::of(&keys), CpuSlice::of(&values));
        if let Some(qs) = rq.as_ref().and_then(CpuSlice::get::<f32>)
            && let Some(ks) = rk.as_ref().and_then(CpuSlice::get::<f32>)
            && let Some(vs) = rv.as_ref().and_then(CpuSlice::get::<f32>)
        {
            let mut out = vec![0f32; qs.len()];
            crate::kernels::attention::attention(
                Isa::detect(),
                &shape,
                qs,
                ks,
                vs,
                mask.filter(|m| !m.is_empty()).map(AttentionMask::view),
                scale as f32,
                &mut out,
            );
            return Ok((cpu_tensor(out, (b, t, heads * d))?, None));
        }
    }
    let (k, v) = kv.filled()?;
    let (y, probs) = eager_attention(&q.transpose(1, 2)?, &k, &v, mask, scale, want_weights)?;
    Ok((y.transpose(1, 2)?.reshape((b, t, heads * vd))?, probs))
}

/// Checks that `mask` describes `t` queries of `b` rows over `kv_len` keys.
fn check_mask(
    mask: Option<&AttentionMask>,
    b: usize,
    t: usize,
    kv_len: usize,
) -> candle_core::Result<()> {
    if let Some(m) = mask
        && (m.batch(), m.q_len(), m.kv_len()) != (b, t, kv_len)
    {
        candle_core::bail!(
            "attention: the mask is for {} rows of {} queries over {} keys, the call has {b} rows of {t} queries over {kv_len} keys",
            m.batch(),
            m.q_len(),
            m.kv_len()
        );
    }
    Ok(())
}

/// Scores (float32) one block of queries may hold: 64 Mi values, 256 MiB.
const SCORES_PER_BLOCK: usize = 1 << 26;

/// `softmax(q k^T * scale + mask) v` on candle's ops (differentiable, any device and dtype)
/// for `q` `[batch, heads, seq, head_dim]` and `k`, `v` `[batch, kv_heads, kv_len, head_dim]`;
/// returns `[batch, heads, seq, v_head_dim]` and, when `want_weights`, the probabilities
/// `[batch, heads, seq, kv_len]`.
///
/// Grouped-query attention without repeating keys/values: consecutive query heads share a
/// key/value head, so the `heads / kv_heads` query heads of a group are folded into the row
/// dimension of one matmul per key/value head (a free reshape of contiguous `q`). `k` and `v`
/// may be strided views (a KV cache narrowed to its filled length): nothing is copied. Long
/// passes run in blocks of queries, so the scores never exceed 256 MiB unless the
/// probabilities themselves are asked for (whose size is checked against the memory
/// available).
pub fn eager_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&AttentionMask>,
    scale: f64,
    want_weights: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    eager_attention_in_blocks(q, k, v, mask, scale, want_weights, SCORES_PER_BLOCK)
}

/// [`eager_attention`] with blocks of at most `scores_per_block` scores.
fn eager_attention_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&AttentionMask>,
    scale: f64,
    want_weights: bool,
    scores_per_block: usize,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let (b, heads, t, _) = q.dims4()?;
    let (_, kv_heads, s, _) = k.dims4()?;
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        candle_core::bail!(
            "attention: {heads} query heads cannot share {kv_heads} key/value heads"
        );
    }
    check_mask(mask, b, t, s)?;
    let per_query = b.saturating_mul(heads).saturating_mul(s).max(1);
    let block = if want_weights {
        let scores = (per_query as u128) * (t as u128);
        patch_checkpoint::memory::check(
            patch_checkpoint::memory::bytes_of(scores, 3 * q.dtype().size_in_bytes().max(4)),
            || format!("the attention probabilities of {t} queries over {s} keys ({b} rows, {heads} heads)"),
            "ask for fewer layers' attentions, or fewer tokens",
        )
        .map_err(candle_core::Error::wrap)?;
        t
    } else {
        (scores_per_block / per_query).clamp(1, t.max(1))
    };
    if block >= t {
        let bias = mask.map(AttentionMask::bias).transpose()?.flatten();
        return eager_block(q, k, v, bias.as_ref(), scale, want_weights);
    }
    let mut outputs = Vec::with_capacity(t.div_ceil(block));
    for start in (0..t).step_by(block) {
        let len = block.min(t - start);
        let bias = mask.map(|m| m.bias_rows(start, len)).transpose()?.flatten();
        let (y, _) = eager_block(&q.narrow(2, start, len)?, k, v, bias.as_ref(), scale, false)?;
        outputs.push(y);
    }
    Ok((Tensor::cat(&outputs, 2)?, None))
}

/// [`eager_attention`] of one block of queries with its bias rows.
fn eager_block(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
    want_weights: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let (b, heads, t, d) = q.dims4()?;
    let (_, kv_heads, s, _) = k.dims4()?;
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
    use crate::ops::max_diff;

    #[test]
    fn kernel_and_eager_paths_agree_with_and_without_weights_and_gradients() {
        let dev = Device::Cpu;
        let (b, t, heads, kv_heads, d) = (2, 5, 4, 2, 8);
        let q = Tensor::randn(0f32, 1.0, (b, t, heads, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, kv_heads, t, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, kv_heads, t, d), &dev).unwrap();
        let flags = vec![1u8, 1, 1, 1, 1, 0, 0, 1, 1, 1];
        let mask = AttentionMask::new(b, 0, t, None, flags, DType::F32, &dev).unwrap();
        let kv = KeyValues {
            keys: &k,
            values: &v,
            len: t,
        };
        let (fast, none) = attention(&q, &kv, Some(&mask), 0.3, false).unwrap();
        assert!(none.is_none() && !fast.track_op());
        let (eager, probs) = attention(&q, &kv, Some(&mask), 0.3, true).unwrap();
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
        let (graph, _) = attention(qv.as_tensor(), &kv, Some(&mask), 0.3, false).unwrap();
        assert!(graph.track_op());
        assert!(max_diff(&fast, &graph) < 1e-5);
        let grads = graph.sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(qv.as_tensor()).unwrap().dims(), q.dims());
    }

    #[test]
    fn blocks_of_queries_give_the_whole_pass_and_its_gradients() {
        let dev = Device::Cpu;
        let (b, heads, kv_heads, t, d) = (2, 4, 2, 7, 8);
        let q =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, heads, t, d), &dev).unwrap()).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, kv_heads, t, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, kv_heads, t, d), &dev).unwrap();
        let flags = vec![0u8, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        let mask = AttentionMask::new(b, 0, t, Some(3), flags, DType::F32, &dev).unwrap();
        let (whole, _) =
            eager_attention_in_blocks(q.as_tensor(), &k, &v, Some(&mask), 0.3, false, usize::MAX)
                .unwrap();
        // 2 rows x 4 heads x 7 keys per query: blocks of 2 queries.
        let (blocked, _) =
            eager_attention_in_blocks(q.as_tensor(), &k, &v, Some(&mask), 0.3, false, 2 * 56)
                .unwrap();
        assert!(max_diff(&whole, &blocked) < 1e-6);
        let g1 = whole.sum_all().unwrap().backward().unwrap();
        let g2 = blocked.sum_all().unwrap().backward().unwrap();
        let (g1, g2) = (
            g1.get(q.as_tensor()).unwrap(),
            g2.get(q.as_tensor()).unwrap(),
        );
        assert!(max_diff(g1, g2) < 1e-6);
    }
}
