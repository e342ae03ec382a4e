//! Token positions of one forward pass, derived from the attention mask.

/// The position of every token of a forward pass, row by row: `[batch, seq]`, row-major.
///
/// A real token's position is the number of real tokens before it in its row (the past
/// included), so a left-padded row starts at 0 where its text starts, as transformers'
/// `generate` computes it. Padding tokens get position 0; they are masked out of attention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Positions {
    batch: usize,
    seq_len: usize,
    ids: Vec<u32>,
}

impl Positions {
    /// Positions `ids` (`batch * seq_len` of them, row-major).
    ///
    /// # Panics
    /// If `ids.len() != batch * seq_len` (a programming error, not a user input).
    pub fn new(batch: usize, seq_len: usize, ids: Vec<u32>) -> Self {
        assert_eq!(
            ids.len(),
            batch * seq_len,
            "positions: {batch} x {seq_len} expected"
        );
        Self {
            batch,
            seq_len,
            ids,
        }
    }

    /// `past .. past + seq_len` in every row (no padding).
    pub fn contiguous(batch: usize, seq_len: usize, past: usize) -> Self {
        let row: Vec<u32> = (past..past + seq_len).map(|p| p as u32).collect();
        Self::new(batch, seq_len, row.repeat(batch))
    }

    /// Rows of `mask` (1 = token, 0 = padding, `batch * seq_len`), each continuing from
    /// `start[row]` real tokens seen before.
    pub fn from_mask(batch: usize, seq_len: usize, mask: &[u8], start: &[u32]) -> Self {
        let mut ids = Vec::with_capacity(batch * seq_len);
        for (row, &first) in mask.chunks(seq_len.max(1)).take(batch).zip(start) {
            let mut next = first;
            for &m in row {
                if m != 0 {
                    ids.push(next);
                    next += 1;
                } else {
                    ids.push(0);
                }
            }
        }
        Self::new(batch, seq_len, ids)
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per row in this pass.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The positions, row-major.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The largest position (0 when empty).
    pub fn max_position(&self) -> u32 {
        self.ids.iter().copied().max().unwrap_or(0)
    }
}
