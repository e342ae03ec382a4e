//! Hostile input against the `patchwork` binary, generated from the reference fixtures
//! (nothing large is committed): outputs, never garbage with success; errors naming the file, the tensor and the place.
//!
//! Each case states its exact outcome: an error (exit 1) whose message holds the fragments
//! that name the file, key or value at fault, or a success with the right output; in every
//! case no panic, no hang (a deadline kills the process), no temporary left behind, and no
//! file that existed before changed afterwards, outputs excepted.

mod hostile_support;

use hostile_support::*;

use serde_json::{Value, json};

#[test]
fn garbage_is_never_output_with_success() {
    let ws = Workspace::new();
    let nan = ws.checkpoint("llama-tiny", "nan");
    patch_tensor(
        &nan.join("model.safetensors"),
        "model.layers.1.mlp.down_proj.weight",
        |b| b[40..44].copy_from_slice(&f32::INFINITY.to_le_bytes()),
    );
    let llama = fixture("llama-tiny").display().to_string();
    let greedy = run(
        &args(&[
            "generate",
            &llama,
            "--prompt-ids",
            "5,6,7",
            "--max-new-tokens",
            "6",
        ]),
        &[],
    );
    assert_eq!(greedy.code, Some(0), "{}", greedy.stderr);
    let greedy_ids = greedy.stdout.lines().last().unwrap().to_string();
    let cases = vec![
        fails(
            "an infinite weight",
            args(&[
                "generate",
                &nan.display().to_string(),
                "--prompt-ids",
                "5,6",
                "--max-new-tokens",
                "2",
            ]),
            &[
                "unreadable  model.layers.1.mlp.down_proj.weight",
                "holds a NaN or infinite value (element 10 of shape [64, 160])",
            ],
        ),
        succeeds(
            "temperature 1e-300 decodes greedily",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5,6,7",
                "--max-new-tokens",
                "6",
                "--temperature",
                "1e-300",
            ]),
            &[&greedy_ids],
        ),
        fails(
            "temperature 0",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5",
                "--max-new-tokens",
                "2",
                "--temperature",
                "0",
            ]),
            &["generation setting temperature = 0"],
        ),
        fails(
            "temperature NaN",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5",
                "--max-new-tokens",
                "2",
                "--temperature",
                "NaN",
            ]),
            &["generation setting temperature = NaN"],
        ),
        fails(
            "top-p 0",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5",
                "--max-new-tokens",
                "2",
                "--temperature",
                "1",
                "--top-p",
                "0",
            ]),
            &["generation setting top_p = 0"],
        ),
        fails(
            "a token past the vocabulary",
            args(&[
                "generate",
                &llama,
                "--prompt-ids",
                "5,256",
                "--max-new-tokens",
                "2",
            ]),
            &["token id 256 at prompts[0, 1] is out of range: the vocabulary has 256 tokens"],
        ),
    ];
    for case in cases {
        check(&ws, case);
    }
}

#[test]
fn errors_name_the_file_the_tensor_and_the_place() {
    let ws = Workspace::new();
    let llama = ws.checkpoint("llama-tiny", "llama");
    let llama_arg = llama.display().to_string();
    let weights = fs_len(&llama.join("model.safetensors"));
    let mut cases = Vec::new();
    let truncated = ws.checkpoint("llama-tiny", "truncated");
    std::fs::File::options()
        .write(true)
        .open(truncated.join("model.safetensors"))
        .unwrap()
        .set_len(weights / 2)
        .unwrap();
    cases.push(fails(
        "a truncated file",
        args(&["inspect", &truncated.display().to_string()]),
        &[
            "truncated/model.safetensors: tensor",
            "reach past the",
            "the file is truncated",
        ],
    ));
    let huge_header = ws.checkpoint("llama-tiny", "huge-header");
    let mut bytes = std::fs::read(huge_header.join("model.safetensors")).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    std::fs::write(huge_header.join("model.safetensors"), bytes).unwrap();
    cases.push(fails(
        "a header length of 2^62",
        args(&["inspect", &huge_header.display().to_string()]),
        &["huge-header/model.safetensors: header length (bytes 0..8) is 4611686018427387904, over the 100000000-byte limit"],
    ));
    let bad_offsets = ws.checkpoint("llama-tiny", "bad-offsets");
    patch_header(&bad_offsets.join("model.safetensors"), |h| {
        h["model.norm.weight"]["shape"] = json!([65]);
    });
    cases.push(fails(
        "offsets that do not match the shape",
        args(&["inspect", &bad_offsets.display().to_string()]),
        &[
            "bad-offsets/model.safetensors: tensor \"model.norm.weight\"",
            "hold 256 bytes, but shape [65] of F32 needs 260",
        ],
    ));
    let overflow = ws.checkpoint("llama-tiny", "overflow");
    patch_header(&overflow.join("model.safetensors"), |h| {
        h["model.norm.weight"]["shape"] = json!([u64::MAX, u64::MAX]);
    });
    cases.push(fails(
        "a shape whose size overflows",
        args(&["inspect", &overflow.display().to_string()]),
        &[
            "tensor \"model.norm.weight\": shape",
            "has more elements than an address space holds",
        ],
    ));
    let int_norm = ws.checkpoint("llama-tiny", "int-norm");
    patch_header(&int_norm.join("model.safetensors"), |h| {
        h["model.norm.weight"]["dtype"] = json!("I32");
    });
    cases.push(fails(
        "an integer norm weight",
        args(&["inspect", &int_norm.display().to_string()]),
        &[
            "unreadable  model.norm.weight",
            "tensor \"model.norm.weight\" is stored as I32, but the model computes in F32",
        ],
    ));
    let unknown = ws.checkpoint("llama-tiny", "unknown-dtype");
    patch_header(&unknown.join("model.safetensors"), |h| {
        h["model.norm.weight"]["dtype"] = json!("Q4");
    });
    cases.push(fails(
        "an unknown dtype",
        args(&["inspect", &unknown.display().to_string()]),
        &["tensor \"model.norm.weight\": unknown dtype \"Q4\""],
    ));
    let unlisted = sharded_with_extra(&ws, "unlisted", 2);
    let index_path = unlisted.join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("extra.1.weight");
    std::fs::write(&index_path, index.to_string()).unwrap();
    cases.push(fails(
        "a key the index does not list",
        args(&["inspect", &unlisted.display().to_string()]),
        &[
            "model-00002-of-00002.safetensors: stores \"extra.1.weight\", which",
            "does not list for this shard",
        ],
    ));
    let absent = sharded_with_extra(&ws, "absent", 1);
    std::fs::remove_file(absent.join("model-00002-of-00002.safetensors")).unwrap();
    cases.push(fails(
        "a shard that does not exist",
        args(&["inspect", &absent.display().to_string()]),
        &[
            "absent/model-00002-of-00002.safetensors: cannot read",
            "caused by: No such file or directory",
        ],
    ));
    let escape = sharded_with_extra(&ws, "escape", 1);
    let index_path = escape.join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["weight_map"]["extra.0.weight"] = json!("../llama/model.safetensors");
    std::fs::write(&index_path, index.to_string()).unwrap();
    cases.push(fails(
        "an index pointing out of its folder",
        args(&["inspect", &escape.display().to_string()]),
        &["weight_map[\"extra.0.weight\"] = \"../llama/model.safetensors\" is not a file in this folder"],
    ));
    std::fs::write(
        ws.path("float-ids.safetensors"),
        safetensors_bytes(&[(
            "input_ids",
            "F32",
            vec![1, 2],
            [1f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
        )]),
    )
    .unwrap();
    cases.push(fails(
        "float input ids",
        args(&[
            "forward",
            &llama_arg,
            "--inputs",
            &ws.arg("float-ids.safetensors"),
            "--out",
            &ws.arg("o.safetensors"),
        ]),
        &["input input_ids"],
    ));
    std::fs::write(
        ws.path("big-id.safetensors"),
        safetensors_bytes(&[(
            "input_ids",
            "I64",
            vec![1, 2],
            [3i64, 999].iter().flat_map(|x| x.to_le_bytes()).collect(),
        )]),
    )
    .unwrap();
    cases.push(fails(
        "an input id past the vocabulary",
        args(&[
            "forward",
            &llama_arg,
            "--inputs",
            &ws.arg("big-id.safetensors"),
            "--out",
            &ws.arg("o.safetensors"),
        ]),
        &["token id 999 at input_ids[0, 1] is out of range"],
    ));
    std::fs::write(
        ws.path("garbage.safetensors"),
        b"not a safetensors file at all",
    )
    .unwrap();
    cases.push(fails(
        "garbage inputs",
        args(&[
            "forward",
            &llama_arg,
            "--inputs",
            &ws.arg("garbage.safetensors"),
            "--out",
            &ws.arg("o.safetensors"),
        ]),
        &["garbage.safetensors: header length (bytes 0..8) is"],
    ));
    for case in cases {
        check(&ws, case);
    }
}
