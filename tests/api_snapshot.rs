//! The public API of every published crate, checked in as `api/<crate>.txt`, one line per
//! public path, method, field, variant, trait item and trait impl (read from the sources with
//! `syn`; see `api/README.md`).
//!
//! - `the_public_api_matches_its_snapshot`: the sources' surface is the checked-in one, so a
//!   change to the public API shows in review as a change to `api/`.
//! - `every_change_since_the_last_release_is_in_the_changelog`: each item whose line differs
//!   from `api/released/<crate>.txt` (the surface of the last release) is named in
//!   CHANGELOG.md's Unreleased section: the changelog entry is required by the check, not by
//!   memory.
//!
//! `UPDATE_API_SNAPSHOT=1 cargo test --workspace --test api_snapshot` rewrites `api/*.txt`.

#[path = "api_snapshot/impls.rs"]
mod impls;
#[path = "api_snapshot/render.rs"]
mod render;
#[path = "api_snapshot/surface.rs"]
mod surface;
#[path = "api_snapshot/tokens.rs"]
mod tokens;
#[path = "api_snapshot/tree.rs"]
mod tree;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tree::Crate;

/// The published library crates: package name, crate name, root source file.
const CRATES: &[(&str, &str, &str)] = &[
    ("patch-core", "patch_core", "patch-core/src/lib.rs"),
    ("patch-macros", "patch_macros", "patch-macros/src/lib.rs"),
    (
        "patch-checkpoint",
        "patch_checkpoint",
        "patch-checkpoint/src/lib.rs",
    ),
    (
        "patchwork-kernels",
        "patchwork_kernels",
        "kernels/src/lib.rs",
    ),
    ("patchwork-gguf", "patchwork_gguf", "gguf/src/lib.rs"),
    ("patchwork-models", "patchwork_models", "models/src/lib.rs"),
    (
        "patchwork-models-macros",
        "patchwork_models_macros",
        "models/macros/src/lib.rs",
    ),
    ("patchwork-quant", "patchwork_quant", "quant/src/lib.rs"),
    (
        "patchwork-parallel",
        "patchwork_parallel",
        "parallel/src/lib.rs",
    ),
    ("patchwork-lora", "patchwork_lora", "lora/src/lib.rs"),
    ("patchwork-hub", "patchwork_hub", "hub/src/lib.rs"),
    ("patchwork-text", "patchwork_text", "text/src/lib.rs"),
];

const UPDATE: &str = "UPDATE_API_SNAPSHOT=1 cargo test --workspace --test api_snapshot";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The surface of crate `name` rooted at `file`, one line each.
fn surface_of(name: &str, file: &Path) -> Vec<String> {
    let krate = Crate::load(name, file).unwrap_or_else(|e| panic!("{e}"));
    surface::lines(&krate)
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `- line` for lines only in `old`, `+ line` for lines only in `new` (both sorted), in path
/// order.
fn diff(old: &[String], new: &[String]) -> Vec<String> {
    let (a, b): (BTreeSet<&String>, BTreeSet<&String>) =
        (old.iter().collect(), new.iter().collect());
    let mut out: Vec<(String, char)> = a
        .difference(&b)
        .map(|l| ((*l).clone(), '-'))
        .chain(b.difference(&a).map(|l| ((*l).clone(), '+')))
        .collect();
    out.sort();
    out.into_iter()
        .map(|(l, sign)| format!("{sign} {l}"))
        .collect()
}

#[test]
fn the_public_api_matches_its_snapshot() {
    let update = std::env::var_os("UPDATE_API_SNAPSHOT").is_some();
    let mut failures = Vec::new();
    for (package, name, file) in CRATES {
        let lines = surface_of(name, &root().join(file));
        let snapshot = root().join("api").join(format!("{package}.txt"));
        let checked_in = read_lines(&snapshot);
        if update {
            std::fs::create_dir_all(root().join("api")).unwrap();
            std::fs::write(&snapshot, lines.join("\n") + "\n").unwrap();
        } else if checked_in != lines {
            failures.push(format!(
                "api/{package}.txt (- checked in, + the sources):\n{}",
                diff(&checked_in, &lines).join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "the public API changed:\n\n{}\n\nIf the change is meant: run `{UPDATE}`, commit api/, \
         and name each changed item in CHANGELOG.md's Unreleased section (a breaking change \
         with its one-line migration; a renamed or moved item keeps a #[deprecated] alias for \
         a release).",
        failures.join("\n\n")
    );
}

/// The text of CHANGELOG.md's Unreleased section.
fn unreleased() -> String {
    let text = std::fs::read_to_string(root().join("CHANGELOG.md")).expect("CHANGELOG.md exists");
    let start = text
        .find("## [Unreleased]")
        .expect("CHANGELOG.md has a `## [Unreleased]` section");
    let rest = &text[start + 1..];
    let end = rest.find("\n## [").map_or(rest.len(), |i| i + 1);
    rest[..end].to_string()
}

/// The name a changelog entry must mention for a snapshot line: `Type::member` for a
/// member, else the item's own name (`DecoderKeys`, `family_config!`).
fn changelog_name(line: &str) -> String {
    // A macro invocation: the first name it declares (`LlamaModel`, `LlamaConfig`).
    if let Some((_, call)) = line.split_once(" macro-call ")
        && let Some((_, args)) = call.split_once("! { ")
        && let Some(name) = args
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .find(|w| !w.is_empty() && !["pub", "struct", "static", "const"].contains(w))
    {
        return name.to_string();
    }
    let path = line.split(' ').next().unwrap_or(line);
    let segs: Vec<&str> = path.split("::").collect();
    match segs.as_slice() {
        [.., owner, member] if owner.starts_with(char::is_uppercase) => {
            format!("{owner}::{member}")
        }
        [.., last] => last.to_string(),
        [] => path.to_string(),
    }
}

#[test]
fn every_change_since_the_last_release_is_in_the_changelog() {
    let unreleased = unreleased();
    let mut missing = Vec::new();
    for (package, name, file) in CRATES {
        // A crate new since the last release has an empty file there: every item is new.
        let released_file = root().join(format!("api/released/{package}.txt"));
        assert!(
            released_file.is_file(),
            "{} is missing: the surface of the last release (empty for a crate new since)",
            released_file.display()
        );
        let released = read_lines(&released_file);
        let lines = surface_of(name, &root().join(file));
        for change in diff(&released, &lines) {
            let needed = changelog_name(&change[2..]);
            if !unreleased.contains(&needed) {
                missing.push(format!("{needed:<40} {change}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "public items changed since the last release that CHANGELOG.md's Unreleased section \
         does not name (each must appear there, in an entry saying what changed and, for a \
         breaking change, the one-line migration):\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_published_library_has_a_snapshot() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let members: Vec<&str> = manifest
        .split("members = [")
        .nth(1)
        .and_then(|m| m.split(']').next())
        .unwrap()
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .collect();
    for member in members {
        let dir = root().join(member);
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let published = !cargo.contains("publish = false");
        if published && dir.join("src/lib.rs").exists() {
            assert!(
                CRATES
                    .iter()
                    .any(|(_, _, file)| root().join(file) == dir.join("src/lib.rs")),
                "{member} is a published library without an API snapshot: add it to CRATES"
            );
        }
    }
}

/// The surface of another checkout of this workspace (`API_SNAPSHOT_OF=DIR`), written to
/// `DIR/api-snapshot/`: how a release's surface is compared with an older commit's.
#[test]
#[ignore = "a tool: run with API_SNAPSHOT_OF=DIR"]
fn snapshot_of_another_checkout() {
    let Some(dir) = std::env::var_os("API_SNAPSHOT_OF") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(dir.join("api-snapshot")).unwrap();
    for (package, name, file) in CRATES {
        let root_file = dir.join(file);
        if root_file.exists() {
            let lines = surface_of(name, &root_file);
            std::fs::write(
                dir.join(format!("api-snapshot/{package}.txt")),
                lines.join("\n") + "\n",
            )
            .unwrap();
        }
    }
}
