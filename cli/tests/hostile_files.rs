//! Hostile input against the `patchwork` binary, generated from the reference fixtures
//! (nothing large is committed): files, written atomically, never through links or over inputs; non-regular files; large indexes.
//!
//! Each case states its exact outcome: an error (exit 1) whose message holds the fragments
//! that name the file, key or value at fault, or a success with the right output; in every
//! case no panic, no hang (a deadline kills the process), no temporary left behind, and no
//! file that existed before changed afterwards, outputs excepted.

mod hostile_support;

use hostile_support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[cfg(unix)]
#[test]
fn writes_are_atomic_and_never_follow_links_or_replace_inputs() {
    let ws = Workspace::new();
    let llama = ws.checkpoint("llama-tiny", "llama");
    let llama_arg = llama.display().to_string();
    std::fs::write(ws.path("in.safetensors"), input_ids(4)).unwrap();
    std::fs::write(ws.path("outside.json"), "keep me").unwrap();
    let mut cases = vec![
        fails(
            "--out is --inputs",
            args(&[
                "forward",
                &llama_arg,
                "--inputs",
                &ws.arg("in.safetensors"),
                "--out",
                &ws.arg("in.safetensors"),
            ]),
            &[
                "in.safetensors: is also an input",
                "refusing to overwrite what is being read",
            ],
        ),
        fails(
            "--out is a checkpoint file",
            args(&[
                "forward",
                &llama_arg,
                "--inputs",
                &ws.arg("in.safetensors"),
                "--out",
                &llama.join("model.safetensors").display().to_string(),
            ]),
            &["model.safetensors: is also an input"],
        ),
        fails(
            "--out is a device",
            args(&[
                "forward",
                &llama_arg,
                "--inputs",
                &ws.arg("in.safetensors"),
                "--out",
                "/dev/null",
            ]),
            &["/dev/null: is a device: refusing to replace it with a file"],
        ),
        fails(
            "--out is a folder",
            args(&[
                "forward",
                &llama_arg,
                "--inputs",
                &ws.arg("in.safetensors"),
                "--out",
                &ws.arg("llama"),
            ]),
            &["is a folder: refusing to replace it"],
        ),
        fails(
            "resave onto itself",
            args(&["resave", &llama_arg, &llama_arg]),
            &["is the checkpoint the weights are read from"],
        ),
    ];
    std::os::unix::fs::symlink(ws.path("in.safetensors"), ws.path("link.safetensors")).unwrap();
    cases.push(fails(
        "--out is a link",
        args(&[
            "forward",
            &llama_arg,
            "--inputs",
            &ws.arg("in.safetensors"),
            "--out",
            &ws.arg("link.safetensors"),
        ]),
        &["link.safetensors: is a symbolic link: refusing to write through it"],
    ));
    // A destination whose config.json links out of it: nothing is written, the link's target
    // keeps its bytes.
    std::fs::create_dir(ws.path("dst")).unwrap();
    std::fs::write(ws.path("dst/model.safetensors"), b"old weights").unwrap();
    std::os::unix::fs::symlink(ws.path("outside.json"), ws.path("dst/config.json")).unwrap();
    cases.push(fails(
        "resave through a linked config.json",
        args(&["resave", &llama_arg, &ws.arg("dst")]),
        &["dst/config.json: is a symbolic link"],
    ));
    // A destination where a shard's name is a folder: refused before any file is written.
    std::fs::create_dir_all(ws.path("dst2/model.safetensors")).unwrap();
    std::fs::write(ws.path("dst2/config.json"), b"old config").unwrap();
    cases.push(fails(
        "resave onto a folder named like a shard",
        args(&["resave", &llama_arg, &ws.arg("dst2")]),
        &["dst2/model.safetensors: is a folder"],
    ));
    // A failure while writing (a tensor that cannot be read) leaves the old files as they were.
    let broken = ws.checkpoint("llama-tiny", "broken");
    patch_tensor(
        &broken.join("model.safetensors"),
        "model.norm.weight",
        |b| b[..4].copy_from_slice(&f32::NAN.to_le_bytes()),
    );
    std::fs::create_dir(ws.path("dst3")).unwrap();
    std::fs::write(ws.path("dst3/config.json"), b"old config").unwrap();
    cases.push(fails(
        "resave of a checkpoint that fails to load",
        args(&["resave", &broken.display().to_string(), &ws.arg("dst3")]),
        &[
            "model.norm.weight",
            "holds a NaN or infinite value (element 0 of shape [64])",
        ],
    ));
    for case in cases {
        check(&ws, case);
    }
    assert_eq!(std::fs::read(ws.path("outside.json")).unwrap(), b"keep me");
    // A good resave replaces the old files of a destination, and nothing else.
    std::fs::create_dir(ws.path("dst4")).unwrap();
    std::fs::write(ws.path("dst4/model-00001-of-00009.safetensors"), b"stale").unwrap();
    std::fs::write(ws.path("dst4/notes.txt"), b"mine").unwrap();
    let mut ok = succeeds(
        "resave",
        args(&["resave", &llama_arg, &ws.arg("dst4")]),
        &["wrote"],
    );
    ok.outputs = vec![
        ws.path("dst4/model-00001-of-00009.safetensors"),
        ws.path("dst4/model.safetensors"),
        ws.path("dst4/config.json"),
    ];
    check(&ws, ok);
    assert_eq!(std::fs::read(ws.path("dst4/notes.txt")).unwrap(), b"mine");
    assert!(!ws.path("dst4/model-00001-of-00009.safetensors").exists());
    let read =
        |p: PathBuf| patch_checkpoint::read_safetensors(p, &candle_core::Device::Cpu).unwrap();
    let (saved, original) = (
        read(ws.path("dst4/model.safetensors")),
        read(llama.join("model.safetensors")),
    );
    assert_eq!(
        saved.keys().collect::<Vec<_>>(),
        original.keys().collect::<Vec<_>>()
    );
    for (key, t) in &saved {
        let bits = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(bits(t), bits(&original[key]), "{key}");
    }
}

#[cfg(unix)]
#[test]
fn non_regular_files_are_refused_without_blocking() {
    let ws = Workspace::new();
    let fifo = |path: &Path| {
        let status = Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success());
    };
    let llama = fixture("llama-tiny").display().to_string();
    fifo(&ws.path("inputs.fifo"));
    let weights_fifo = ws.checkpoint("llama-tiny", "fifo-weights");
    std::fs::remove_file(weights_fifo.join("model.safetensors")).unwrap();
    fifo(&weights_fifo.join("model.safetensors"));
    let config_fifo = ws.checkpoint("llama-tiny", "fifo-config");
    std::fs::remove_file(config_fifo.join("config.json")).unwrap();
    fifo(&config_fifo.join("config.json"));
    let config_dev = ws.checkpoint("llama-tiny", "dev-config");
    std::fs::remove_file(config_dev.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", config_dev.join("config.json")).unwrap();
    let config_dir = ws.checkpoint("llama-tiny", "dir-config");
    std::fs::remove_file(config_dir.join("config.json")).unwrap();
    std::fs::create_dir(config_dir.join("config.json")).unwrap();
    let cases = vec![
        fails(
            "FIFO as --inputs",
            args(&[
                "forward",
                &llama,
                "--inputs",
                &ws.arg("inputs.fifo"),
                "--out",
                &ws.arg("o.safetensors"),
            ]),
            &["inputs.fifo: is a FIFO, not a regular file"],
        ),
        fails(
            "FIFO as model.safetensors",
            args(&["inspect", &weights_fifo.display().to_string()]),
            &["fifo-weights/model.safetensors: is a FIFO, not a regular file"],
        ),
        fails(
            "FIFO as config.json",
            args(&["inspect", &config_fifo.display().to_string()]),
            &["fifo-config/config.json: is a FIFO"],
        ),
        fails(
            "/dev/zero as config.json",
            args(&["inspect", &config_dev.display().to_string()]),
            &["dev-config/config.json: is a device"],
        ),
        fails(
            "a folder as config.json",
            args(&["inspect", &config_dir.display().to_string()]),
            &["dir-config/config.json: is a folder"],
        ),
        fails(
            "a missing folder",
            args(&["inspect", &ws.arg("nowhere")]),
            &["nowhere\": no such folder, and not a Hub id"],
        ),
    ];
    for case in cases {
        check(&ws, case);
    }
    // A sparse 300 MB config.json (in a workspace of its own: snapshots read every file):
    // refused by its length, never read.
    let ws = Workspace::new();
    let config_huge = ws.checkpoint("llama-tiny", "huge-config");
    std::fs::File::options()
        .write(true)
        .open(config_huge.join("config.json"))
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    check(
        &ws,
        fails(
            "a 300 MB config.json",
            args(&["inspect", &config_huge.display().to_string()]),
            &["huge-config/config.json: is 314572800 bytes long, over the 268435456-byte limit"],
        ),
    );
}

#[test]
fn large_indexes_are_checked_in_linear_time() {
    let ws = Workspace::new();
    // 200,000 keys: the index check, the plan and the accounting stay linear (this took
    // over a minute when the index check was quadratic); the unused keys are one error with
    // a capped list.
    let dir = sharded_with_extra(&ws, "big", 200_000);
    let started = Instant::now();
    check(
        &ws,
        fails(
            "200,000 unused keys",
            args(&["inspect", &dir.display().to_string()]),
            &["unexpected  extra.0.weight", "and 199976 more"],
        ),
    );
    eprintln!("200,000-key index: {:.2?}", started.elapsed());
}
