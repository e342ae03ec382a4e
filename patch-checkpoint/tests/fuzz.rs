//! A bounded fuzzing pass over the checkpoint readers, run by `cargo test` (the `fuzz/`
//! targets run the same entry points for as long as one likes): random bytes, mutations of a
//! valid file, and headers built from hostile parts must all be read without a panic.

use patch_checkpoint::fuzzing;
use proptest::prelude::*;
use serde_json::{Value, json};

/// A valid three-tensor safetensors file.
fn valid() -> Vec<u8> {
    let header = json!({
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]},
        "c": {"dtype": "I64", "shape": [1], "data_offsets": [22, 30]},
    })
    .to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend((0..30u8).map(|i| i.wrapping_mul(37)));
    bytes
}

/// An edit of a byte string.
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1..16usize).prop_map(|(i, n)| Edit::Remove(i, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len().max(1);
        match e {
            Edit::Set(i, b) => {
                if !bytes.is_empty() {
                    bytes[i % n] = *b;
                }
            }
            Edit::Truncate(i) => bytes.truncate(i % n),
            Edit::Insert(i, b) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Remove(i, len) => {
                let at = i % n;
                let end = (at + len).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
        }
    }
    bytes
}

/// A JSON value for a header field: mostly plausible, sometimes hostile.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..64).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        Just(Value::Null),
        "[a-z]{0,3}".prop_map(Value::from),
    ]
}

fn entry() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just(json!("F32")),
            Just(json!("BF16")),
            Just(json!("F16")),
            Just(json!("I64")),
            Just(json!("U8")),
            Just(json!("F4")),
            Just(json!("F8_E4M3")),
            Just(json!("C64")),
            "[A-Z0-9_]{0,6}".prop_map(Value::from),
            number(),
        ],
        proptest::collection::vec(number(), 0..4),
        proptest::collection::vec(number(), 0..3),
    )
        .prop_map(|(dtype, shape, offsets)| json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}))
}

fn built() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::btree_map("[a-c.]{0,4}", entry(), 0..5),
        0usize..96,
        any::<u8>(),
    )
        .prop_map(|(entries, data, fill)| {
            let header = Value::Object(entries.into_iter().collect()).to_string();
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.resize(bytes.len() + data, fill);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzzing::safetensors(&bytes);
        fuzzing::index(&bytes);
    }

    #[test]
    fn mutated_files(edits in proptest::collection::vec(edit(), 1..6)) {
        fuzzing::safetensors(&apply(valid(), &edits));
    }

    #[test]
    fn built_headers(bytes in built()) {
        fuzzing::safetensors(&bytes);
    }

    #[test]
    fn indexes(map in proptest::collection::btree_map("[a-z.]{0,6}", prop_oneof![
        "[a-z0-9./\\\\-]{0,12}".prop_map(Value::from),
        number(),
    ], 0..6)) {
        let index = json!({"metadata": {}, "weight_map": map}).to_string();
        fuzzing::index(index.as_bytes());
    }
}
