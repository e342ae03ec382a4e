//! The key/value cache: allocated once per generation, written in place.

use candle_core::Tensor;

use crate::{Error, Result};

/// One layer's cached keys and values: `[batch, kv_heads, capacity, head_dim]` each,
/// allocated on the first write (so an attention replacement with another head layout gets a
/// cache of its own shape) and then written in place with `slice_set`, never reallocated or
/// concatenated.
#[derive(Debug)]
pub struct LayerKvCache {
    capacity: usize,
    len: usize,
    kv: Option<(Tensor, Tensor)>,
}

impl LayerKvCache {
    /// An empty cache for `capacity` positions.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            len: 0,
            kv: None,
        }
    }

    /// Positions written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The whole key and value buffers, `[batch, kv_heads, capacity, head_dim]` each (the first
    /// [`len`](Self::len) positions are filled), once something was written: what attention
    /// kernels read in place.
    pub fn buffers(&self) -> Option<(&Tensor, &Tensor)> {
        self.kv.as_ref().map(|(k, v)| (k, v))
    }

    /// Writes `k` and `v` (`[batch, kv_heads, seq, head_dim]`, the new positions) after the
    /// cached ones and returns views of everything cached, `[batch, kv_heads, len, head_dim]`
    /// (no copy: views into the preallocated buffers).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        if v.dims4()? != (b, h, t, v.dim(3)?) {
            candle_core::bail!(
                "kv cache: keys {:?} and values {:?} disagree",
                k.shape(),
                v.shape()
            );
        }
        if self.len.checked_add(t).is_none_or(|n| n > self.capacity) {
            candle_core::bail!(
                "kv cache full: capacity {}, {} positions used, {t} more asked",
                self.capacity,
                self.len
            );
        }
        let (kc, vc) = match &self.kv {
            Some(kv) => kv.clone(),
            None => {
                let elements = (b as u128) * (h as u128) * (self.capacity as u128);
                patch_checkpoint::memory::check(
                    elements * (d + v.dim(3)?) as u128 * k.dtype().size_in_bytes() as u128,
                    || {
                        format!(
                            "a layer's KV cache of {b} rows x {} positions",
                            self.capacity
                        )
                    },
                    "",
                )
                .map_err(candle_core::Error::wrap)?;
                let kc = Tensor::zeros((b, h, self.capacity, d), k.dtype(), k.device())?;
                let vc = Tensor::zeros((b, h, self.capacity, v.dim(3)?), v.dtype(), v.device())?;
                self.kv = Some((kc.clone(), vc.clone()));
                (kc, vc)
            }
        };
        kc.slice_set(&k.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += t;
        Ok((kc.narrow(2, 0, self.len)?, vc.narrow(2, 0, self.len)?))
    }
}

/// The cache of a whole model for one batch: every layer's [`LayerKvCache`], plus which
/// cached positions hold real tokens (the padding mask so far) and how many real tokens each
/// row has seen (where its next position starts).
///
/// A forward pass that fails part-way leaves the cache in an unspecified state: start a new
/// one (they are cheap to create; the buffers are allocated on first use).
#[derive(Debug)]
pub struct KvCache {
    batch: usize,
    capacity: usize,
    len: usize,
    layers: Vec<LayerKvCache>,
    /// `batch x capacity`, 1 where a real token was written.
    key_mask: Vec<u8>,
    /// Real tokens seen per row.
    seen: Vec<u32>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers, `batch` rows and `capacity` positions (the
    /// layers' buffers are allocated on first write).
    pub fn new(num_layers: usize, batch: usize, capacity: usize) -> Result<Self> {
        let flags = batch.checked_mul(capacity).ok_or_else(|| {
            Error::input(
                "cache",
                format!("{batch} rows x {capacity} positions overflow"),
            )
        })?;
        Ok(Self {
            batch,
            capacity,
            len: 0,
            layers: (0..num_layers)
                .map(|_| LayerKvCache::new(capacity))
                .collect(),
            key_mask: vec![0; flags],
            seen: vec![0; batch],
        })
    }

    /// Rows.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions written so far (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layer `i`'s cache.
    pub fn layer_mut(&mut self, i: usize) -> Option<&mut LayerKvCache> {
        self.layers.get_mut(i)
    }

    /// Every layer's cache.
    pub fn layers_mut(&mut self) -> &mut [LayerKvCache] {
        &mut self.layers
    }

    /// Checks a pass of `seq_len` tokens fits and records its padding mask (`batch x
    /// seq_len`); returns the starting positions of each row. The layers write their keys
    /// during the pass; [`KvCache::commit`] ends it.
    pub(crate) fn begin(&mut self, mask: &[u8], seq_len: usize) -> Result<Vec<u32>> {
        if self
            .len
            .checked_add(seq_len)
            .is_none_or(|n| n > self.capacity)
        {
            return Err(Error::CacheFull {
                capacity: self.capacity,
                used: self.len,
                adding: seq_len,
            });
        }
        let start = self.seen.clone();
        for row in 0..self.batch {
            let src = &mask[row * seq_len..(row + 1) * seq_len];
            let dst = row * self.capacity + self.len;
            self.key_mask[dst..dst + seq_len].copy_from_slice(src);
            self.seen[row] += src.iter().filter(|&&m| m != 0).count() as u32;
        }
        Ok(start)
    }

    /// Ends a pass of `seq_len` tokens.
    pub(crate) fn commit(&mut self, seq_len: usize) {
        self.len += seq_len;
    }

    /// The padding mask of the first `len` positions of `row`.
    pub(crate) fn key_mask(&self, row: usize, len: usize) -> &[u8] {
        &self.key_mask[row * self.capacity..row * self.capacity + len]
    }
}
