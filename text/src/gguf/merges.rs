//! The merges a SentencePiece vocabulary implies, and GPT-2's byte-to-character table.

use std::collections::HashMap;

use serde_json::{Value, json};

/// The merges a SentencePiece vocabulary implies (transformers' `generate_merges` with the
/// scores): every split of every token into two tokens of the vocabulary, each split ordered by
/// its pieces' ids, then all by the token's score, longer left then right pieces first, stably.
pub(super) fn merges_from_scores(tokens: &[String], scores: &[f64]) -> Vec<Value> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        ids.insert(t, i);
    }
    // A token listed twice is visited once, with its last score, at its first place.
    let mut order: Vec<(&str, f64)> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (t, &s) in tokens.iter().zip(scores) {
        match at.get(t.as_str()) {
            Some(&i) => order[i].1 = s,
            None => {
                at.insert(t, order.len());
                order.push((t, s));
            }
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for (token, score) in order {
        let chars: Vec<(usize, char)> = token.char_indices().collect();
        let mut local: Vec<(&str, &str, f64)> = Vec::new();
        for &(cut, _) in chars.iter().skip(1) {
            let (l, r) = token.split_at(cut);
            if ids.contains_key(l) && ids.contains_key(r) {
                local.push((l, r, score));
            }
        }
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        merges.extend(local);
    }
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| json!([l, r])).collect()
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`).
pub(super) fn bytes_to_unicode() -> HashMap<u8, char> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .filter_map(|(b, c)| Some((u8::try_from(b).ok()?, char::from_u32(c)?)))
        .collect()
}
