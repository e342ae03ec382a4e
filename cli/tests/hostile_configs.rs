//! Hostile input against the `patchwork` binary, generated from the reference fixtures
//! (nothing large is committed): configs and lengths, sizes checked before anything is built and bounded by the model and by memory.
//!
//! Each case states its exact outcome: an error (exit 1) whose message holds the fragments
//! that name the file, key or value at fault, or a success with the right output; in every
//! case no panic, no hang (a deadline kills the process), no temporary left behind, and no
//! file that existed before changed afterwards, outputs excepted.

mod hostile_support;

use hostile_support::*;

use serde_json::json;

#[test]
fn config_sizes_are_checked_before_anything_is_built() {
    let ws = Workspace::new();
    let mut cases = Vec::new();
    for (key, value, fragments) in [
        (
            "num_hidden_layers",
            json!(10_000_000),
            vec![
                "key \"num_hidden_layers\"",
                "10000000 is over the limit of 4096",
            ],
        ),
        (
            "num_hidden_layers",
            json!(1_000_000_000_000_000_000u64),
            vec!["key \"num_hidden_layers\"", "1000000000000000000"],
        ),
        (
            "num_hidden_layers",
            json!(3),
            vec![
                "key \"num_hidden_layers\"",
                "is 3, but the checkpoint stores layers 0..=1 only",
            ],
        ),
        (
            "head_dim",
            json!(1_000_000_000),
            vec!["key \"head_dim\"", "1000000000 is over the limit"],
        ),
        (
            "head_dim",
            json!(32),
            vec![
                "key \"head_dim\"",
                "num_attention_heads 4 x head_dim 32 = 128, but model.layers.0.self_attn.q_proj.weight has shape [64, 64]",
            ],
        ),
        (
            "intermediate_size",
            json!(1_000_000_000_000u64),
            vec![
                "key \"intermediate_size\"",
                "1000000000000 is over the limit",
            ],
        ),
        (
            "intermediate_size",
            json!(4096),
            vec![
                "key \"intermediate_size\"",
                "is 4096, but model.layers.0.mlp.gate_proj.weight has shape [160, 64]",
            ],
        ),
        (
            "hidden_size",
            json!(1 << 19),
            vec![
                "key \"hidden_size\"",
                "is 524288, but model.embed_tokens.weight has shape [256, 64]",
            ],
        ),
        (
            "vocab_size",
            json!(1u64 << 40),
            vec![
                "key \"vocab_size\"",
                "1099511627776 is over the limit of 16777216",
            ],
        ),
        (
            "vocab_size",
            json!(0),
            vec!["key \"vocab_size\"", "must be at least 1, found 0"],
        ),
        (
            "num_key_value_heads",
            json!(3),
            vec![
                "key \"num_key_value_heads\"",
                "3 does not divide num_attention_heads = 4",
            ],
        ),
        (
            "max_position_embeddings",
            json!(-1),
            vec![
                "key \"max_position_embeddings\"",
                "invalid value: integer `-1`",
            ],
        ),
        (
            "rms_norm_eps",
            json!("tiny"),
            vec!["key \"rms_norm_eps\"", "invalid type: string \"tiny\""],
        ),
        (
            "model_type",
            json!("gpt9"),
            vec!["model_type \"gpt9\" is not a linked model family"],
        ),
        (
            "eos_token_id",
            json!(256),
            vec![
                "key \"eos_token_id\"",
                "token id 256 is not below vocab_size 256",
            ],
        ),
    ] {
        let dir = ws.config_edit("llama-tiny", &format!("{key}-{value}"), |c| {
            c[key] = value.clone()
        });
        let config = dir.join("config.json").display().to_string();
        let mut want = vec![config.as_str()];
        want.extend(fragments);
        cases.push(fails(
            "config size",
            args(&["inspect", &dir.display().to_string()]),
            &want,
        ));
    }
    let moe = ws.config_edit("qwen2-moe-tiny", "experts", |c| {
        c["num_experts"] = json!(1u64 << 30)
    });
    cases.push(fails(
        "num_experts",
        args(&["inspect", &moe.display().to_string()]),
        &[
            "key \"num_experts\"",
            "1073741824 is over the limit of 65536",
        ],
    ));
    let moe = ws.config_edit("qwen2-moe-tiny", "experts-wrong", |c| {
        c["moe_intermediate_size"] = json!(1 << 20)
    });
    cases.push(fails(
        "moe_intermediate_size",
        args(&["inspect", &moe.display().to_string()]),
        &[
            "describe",
            "parameters, but the checkpoint stores",
            "the config does not describe these weights",
        ],
    ));
    let not_object = ws.checkpoint("llama-tiny", "array-config");
    std::fs::write(not_object.join("config.json"), "[1, 2]").unwrap();
    cases.push(fails(
        "config not an object",
        args(&["inspect", &not_object.display().to_string()]),
        &["config.json", "expected a JSON object"],
    ));
    let bad_json = ws.checkpoint("llama-tiny", "bad-json");
    std::fs::write(bad_json.join("config.json"), "{\"vocab_size\": 256,").unwrap();
    cases.push(fails(
        "config not JSON",
        args(&["inspect", &bad_json.display().to_string()]),
        &["config.json: invalid JSON", "EOF while parsing"],
    ));
    for case in cases {
        check(&ws, case);
    }
}

#[test]
fn lengths_are_bounded_by_the_model_and_by_memory() {
    let ws = Workspace::new();
    let llama = fixture("llama-tiny").display().to_string();
    std::fs::write(ws.path("600.safetensors"), input_ids(600)).unwrap();
    std::fs::write(ws.path("8000.safetensors"), input_ids(8000)).unwrap();
    let out = ws.path("out.safetensors");
    let cases = vec![
        fails(
            "max-new-tokens 1e9",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5,6",
                "--max-new-tokens",
                "1000000000",
            ]),
            &[
                "a prompt of 2 tokens and max_new_tokens = 1000000000 reaches 1000000002 positions, past the 512",
            ],
        ),
        fails(
            "max-new-tokens usize::MAX",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5,6",
                "--max-new-tokens",
                &usize::MAX.to_string(),
            ]),
            &["reaches more than 2^64 positions, past the 512"],
        ),
        fails(
            "600 tokens against 512",
            args(&[
                "forward",
                &llama,
                "--inputs",
                &ws.arg("600.safetensors"),
                "--out",
                &ws.arg("out.safetensors"),
            ]),
            &[
                "a pass of 600 tokens after 0 cached positions reaches 600 positions, past the 512",
                "--max-positions",
            ],
        ),
        fails(
            "max-positions 0",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5",
                "--max-new-tokens",
                "1",
                "--max-positions",
                "0",
            ]),
            &["input max_positions: 0 is not in 1..="],
        ),
        fails(
            "prompt past the limit in bench",
            args(&[
                "bench",
                &llama,
                "--prompt-len",
                "1000000000000",
                "--decode",
                "1",
            ]),
            &["--prompt-len 1000000000000 and --decode 1 reach past the 512 positions"],
        ),
        fails(
            "attention probabilities of 8000 tokens",
            args(&[
                "forward",
                &llama,
                "--inputs",
                &ws.arg("8000.safetensors"),
                "--out",
                &ws.arg("out.safetensors"),
                "--max-positions",
                "8000",
                "--output-attentions",
            ]),
            &[
                "the attention probabilities of 8000 queries over 8000 keys",
                "needs",
                "is available",
            ],
        ),
    ];
    for mut case in cases {
        case.env.push(("PATCHWORK_MEMORY_LIMIT", "2G"));
        check(&ws, case);
    }
    // A long pass the model allows runs in bounded memory: the attention mask is never an
    // 8000 x 8000 buffer (256 MB), so a 160 MiB limit is enough.
    let mut long = succeeds(
        "8000 tokens with --max-positions",
        args(&[
            "forward",
            &llama,
            "--inputs",
            &ws.arg("8000.safetensors"),
            "--out",
            &ws.arg("out.safetensors"),
            "--max-positions",
            "8000",
        ]),
        &[],
    );
    long.env.push(("PATCHWORK_MEMORY_LIMIT", "160M"));
    long.outputs.push(out.clone());
    check(&ws, long);
    let logits = patch_checkpoint::read_safetensors(&out, &candle_core::Device::Cpu).unwrap();
    assert_eq!(logits["logits"].dims(), &[1, 8000, 256]);
}
