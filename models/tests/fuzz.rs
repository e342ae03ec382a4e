//! A bounded fuzzing pass over the models' readers, run by `cargo test` (the `fuzz/` targets run
//! the same entry points for as long as one likes): configs with hostile values and forward
//! inputs of any dtype, shape and values must end in `Ok` or `Err`, never a panic.

use patchwork_models::fuzzing;
use proptest::prelude::*;
use serde_json::{Value, json};

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        (0u64..8).prop_map(Value::from),
        (0u64..70_000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        prop_oneof![
            Just("silu"),
            Just("gelu"),
            Just("llama3"),
            Just("yarn"),
            Just("linear"),
            Just("dynamic"),
            Just("full_attention"),
            Just("sliding_attention"),
            Just("x"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("rope_type"),
                    Just("factor"),
                    Just("rope_theta"),
                    Just("type"),
                    Just("original_max_position_embeddings"),
                    Just("beta_fast")
                ]
                .prop_map(String::from),
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "decoder_sparse_step",
    "mlp_only_layers",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "layer_types",
    "attn_implementation",
    "experts_implementation",
    "attention_bias",
    "mlp_bias",
];

fn config() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just("llama"),
            Just("qwen2_moe"),
            Just("qwen3"),
            Just("qwen3_moe")
        ],
        proptest::collection::vec((0..KEYS.len(), value()), 0..6),
    )
        .prop_map(|(model_type, edits)| {
            let mut c = json!({
                "model_type": model_type, "vocab_size": 32, "hidden_size": 16,
                "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 1, "num_experts": 4, "num_experts_per_tok": 2,
                "moe_intermediate_size": 8, "shared_expert_intermediate_size": 8,
                "max_position_embeddings": 64,
            });
            for (k, v) in edits {
                c[KEYS[k]] = v;
            }
            c.to_string().into_bytes()
        })
}

fn inputs() -> impl Strategy<Value = Vec<u8>> {
    let tensor = (
        prop_oneof![
            Just(("I64", 8)),
            Just(("U32", 4)),
            Just(("F32", 4)),
            Just(("U8", 1)),
            Just(("BF16", 2))
        ],
        proptest::collection::vec(0usize..5, 0..4),
        any::<u8>(),
    );
    proptest::collection::vec(tensor, 1..4).prop_map(|tensors| {
        let names = ["input_ids", "attention_mask", "labels"];
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (i, ((dtype, size), shape, seed)) in tensors.into_iter().enumerate() {
            let n: usize = shape.iter().product::<usize>() * size;
            let start = data.len();
            data.extend((0..n).map(|j| (j as u8).wrapping_mul(seed) % 40));
            header.insert(
                names[i].into(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let text = Value::Object(header).to_string();
        let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(&data);
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn configs(bytes in config()) {
        fuzzing::config(&bytes);
    }

    #[test]
    fn forward_inputs(bytes in inputs()) {
        fuzzing::forward_inputs(&bytes);
    }

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        fuzzing::config(&bytes);
        fuzzing::forward_inputs(&bytes);
    }
}
