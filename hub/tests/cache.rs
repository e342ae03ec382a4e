//! Resolution through a Hub cache tree built here (CI has no network): branches, tags and
//! commit hashes, blobs linked from snapshots, offline errors that name the id and the cache.

use std::path::{Path, PathBuf};

use patchwork_hub::{Error, HubOptions, is_hub_id, repo_folder, resolve_model};

const MAIN: &str = "1111111111111111111111111111111111111111";
const V1: &str = "2222222222222222222222222222222222222222";

/// A cache with `org/tiny` at two commits (`refs/main` and `refs/v1`), files as links to blobs
/// as the Hub client lays them out, and `org/sharded` whose second shard is missing.
fn cache() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_folder(root.path(), "org/tiny");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), MAIN).unwrap();
    std::fs::write(repo.join("refs/v1"), format!("{V1}\n")).unwrap();
    for (commit, marker) in [(MAIN, "main"), (V1, "v1")] {
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        for (file, contents) in [
            ("config.json", format!("{{\"revision\": \"{marker}\"}}")),
            ("model.safetensors", marker.to_string()),
        ] {
            let blob = repo.join("blobs").join(format!("{marker}-{file}"));
            std::fs::write(&blob, contents).unwrap();
            link(&blob, &snapshot.join(file));
        }
    }
    let sharded = repo_folder(root.path(), "org/sharded");
    let snapshot = sharded.join("snapshots").join(MAIN);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(sharded.join("refs")).unwrap();
    std::fs::write(sharded.join("refs/main"), MAIN).unwrap();
    std::fs::write(snapshot.join("config.json"), "{}").unwrap();
    std::fs::write(
        snapshot.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    std::fs::write(snapshot.join("model-00001-of-00002.safetensors"), "x").unwrap();
    root
}

#[cfg(unix)]
fn link(target: &Path, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap();
}

#[cfg(not(unix))]
fn link(target: &Path, at: &Path) {
    std::fs::copy(target, at).unwrap();
}

fn offline(root: &Path) -> HubOptions {
    HubOptions::default()
        .with_cache_dir(root)
        .with_offline(true)
}

fn revision_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("config.json")).unwrap()
}

#[test]
fn branches_tags_and_commits_resolve_to_their_snapshots() {
    let root = cache();
    let main = resolve_model("org/tiny", &offline(root.path())).unwrap();
    assert_eq!(
        main,
        repo_folder(root.path(), "org/tiny")
            .join("snapshots")
            .join(MAIN)
    );
    assert!(revision_of(&main).contains("main"));
    let v1 = resolve_model("org/tiny", &offline(root.path()).with_revision("v1")).unwrap();
    assert!(revision_of(&v1).contains("v1"));
    let by_hash = resolve_model("org/tiny", &offline(root.path()).with_revision(V1)).unwrap();
    assert_eq!(by_hash, v1);
}

#[test]
fn a_folder_that_exists_wins() {
    let root = cache();
    let folder: PathBuf = root.path().join("models--org--tiny");
    assert_eq!(
        resolve_model(&folder, &offline(root.path())).unwrap(),
        folder
    );
}

#[test]
fn what_the_cache_lacks_offline_is_an_error_naming_the_id_and_the_cache() {
    let root = cache();
    let cache = root.path().display().to_string();
    let e = resolve_model("org/absent", &offline(root.path())).unwrap_err();
    assert!(matches!(e, Error::NotCached { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.starts_with("Hub id \"org/absent\" (revision \"main\") is not in the cache at "),
        "{e}"
    );
    assert!(
        e.contains(&cache) && e.contains("models--org--absent") && e.contains("offline"),
        "{e}"
    );
    let e = resolve_model("org/tiny", &offline(root.path()).with_revision("v9"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("refs/v9"), "{e}");
    let e = resolve_model("org/sharded", &offline(root.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("lacks model-00002-of-00002.safetensors"), "{e}");
    let e = resolve_model("org/tiny", &offline(root.path()).with_revision("../../x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a branch or tag name"), "{e}");
}

#[test]
fn names_that_are_neither_folders_nor_ids_are_errors() {
    let e = resolve_model("/no/such/folder", &HubOptions::default().with_offline(true))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"/no/such/folder\": no such folder, and not a Hub id"),
        "{e}"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    let e = resolve_model(file.path(), &HubOptions::default().with_offline(true))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a folder: a model is a folder"), "{e}");
    assert!(is_hub_id("Qwen/Qwen3-30B-A3B"));
    assert!(!is_hub_id("/abs/path") && !is_hub_id("a/b/c") && !is_hub_id("../x"));
}

#[test]
fn the_cache_folder_follows_the_environment_conventions() {
    // Only an explicit folder here: tests share the process environment.
    let options = HubOptions::default().with_cache_dir("/x/hub");
    assert_eq!(options.cache(), PathBuf::from("/x/hub"));
    assert!(HubOptions::default().with_offline(true).is_offline());
    assert!(!HubOptions::default().with_offline(false).is_offline());
}
