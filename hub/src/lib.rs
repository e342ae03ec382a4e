#![warn(missing_docs)]
//! Models by Hugging Face Hub id: a folder path, or an id (`Qwen/Qwen3-30B-A3B`) resolved
//! through the standard Hub cache layout, offline from the cache or downloading when online.
//!
//! The cache is the one `huggingface_hub` and transformers use: `HF_HUB_CACHE`, else
//! `HF_HOME/hub`, else `~/.cache/huggingface/hub`; a model lives under
//! `models--ORG--NAME/`, its branches and tags in `refs/REVISION` (a commit hash) and its files
//! in `snapshots/COMMIT/`. `HF_HUB_OFFLINE=1` (or [`HubOptions::offline`]) never touches the
//! network. Downloading goes through the `hf-hub` crate, which fills the same layout.
//!
//! ```no_run
//! use patchwork_hub::{HubOptions, resolve_model};
//! let dir = resolve_model("Qwen/Qwen3-0.6B", &HubOptions::default())?;
//! assert!(dir.join("config.json").is_file());
//! # Ok::<(), patchwork_hub::Error>(())
//! ```

use std::path::{Path, PathBuf};

/// What went wrong finding a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is neither an existing folder nor a Hub id.
    #[error(
        "{name:?}: no such folder, and not a Hub id (ORG/NAME of letters, digits, '-', '_' and '.')"
    )]
    NotFound {
        /// What was given.
        name: String,
    },
    /// The name is an existing file or other non-folder: a model is a folder.
    #[error("{name:?} is not a folder: a model is a folder holding config.json and its weights")]
    NotAFolder {
        /// What was given.
        name: String,
    },
    /// Offline, and the cache does not hold the model (or part of it).
    #[error(
        "Hub id {id:?} (revision {revision:?}) is not in the cache at {cache}: {missing}{hint}"
    )]
    NotCached {
        /// The id.
        id: String,
        /// The revision asked for.
        revision: String,
        /// The cache folder looked in.
        cache: String,
        /// What is missing.
        missing: String,
        /// Why nothing was downloaded.
        hint: &'static str,
    },
    /// Downloading a file failed.
    #[error("Hub id {id:?}: downloading {file} failed: {message}")]
    Download {
        /// The id.
        id: String,
        /// The file.
        file: String,
        /// What the client said.
        message: String,
    },
    /// A file of the snapshot could not be read.
    #[error(transparent)]
    File(#[from] patch_checkpoint::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where and how to look for a model by id.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Branch, tag or commit hash. Default `main`.
    pub revision: String,
    /// The cache folder; `None` takes `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Never download; `None` takes `HF_HUB_OFFLINE` (`1`, `true`, `yes` or `on`).
    pub offline: Option<bool>,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            revision: "main".into(),
            cache_dir: None,
            offline: None,
        }
    }
}

impl HubOptions {
    /// These options at `revision`.
    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// These options looking in `cache_dir`.
    pub fn with_cache_dir(mut self, cache_dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(cache_dir.into());
        self
    }

    /// These options never downloading (`true`) or downloading what the cache lacks
    /// (`false`), whatever `HF_HUB_OFFLINE` says.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = Some(offline);
        self
    }

    /// The cache folder these options look in.
    pub fn cache(&self) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return dir.clone();
        }
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = var("HF_HUB_CACHE") {
            return dir.into();
        }
        if let Some(home) = var("HF_HOME") {
            return PathBuf::from(home).join("hub");
        }
        let home = var("HOME")
            .or_else(|| var("USERPROFILE"))
            .unwrap_or_default();
        PathBuf::from(home).join(".cache/huggingface/hub")
    }

    /// Whether these options forbid downloading.
    pub fn is_offline(&self) -> bool {
        self.offline.unwrap_or_else(|| {
            std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
        })
    }
}

/// Whether `name` is a Hub model id: `NAME` or `ORG/NAME`, each part of ASCII letters, digits,
/// `-`, `_` and `.`, not starting or ending with `-` or `.`, without `--` or `..`, at most 96
/// characters.
pub fn is_hub_id(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    match name.split_once('/') {
        Some((org, model)) => part(org) && part(model),
        None => part(name),
    }
}

/// The files of a model a snapshot must hold besides its weights.
const REQUIRED: &[&str] = &["config.json"];
/// The files fetched when present (tokenizer and generation settings).
const OPTIONAL: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// The local folder of `name`: `name` itself when it is an existing folder (a path wins),
/// else the cache snapshot of the Hub id `name` at `options.revision`, downloaded first when
/// the cache lacks it and downloading is allowed.
pub fn resolve_model(name: impl AsRef<Path>, options: &HubOptions) -> Result<PathBuf> {
    let path = name.as_ref();
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let text = path.to_string_lossy().into_owned();
    if path.symlink_metadata().is_ok() {
        return Err(Error::NotAFolder { name: text });
    }
    if !is_hub_id(&text) {
        return Err(Error::NotFound { name: text });
    }
    let cache = options.cache();
    let _span = tracing::info_span!("resolve", id = %text, revision = %options.revision).entered();
    match cached_snapshot(&cache, &text, &options.revision)? {
        Ok(dir) => {
            tracing::debug!(dir = %dir.display(), "found in the cache");
            Ok(dir)
        }
        Err(missing) if options.is_offline() => Err(Error::NotCached {
            id: text,
            revision: options.revision.clone(),
            cache: cache.display().to_string(),
            missing,
            hint: " (offline: HF_HUB_OFFLINE is set, or offline was asked for)",
        }),
        Err(missing) => {
            tracing::info!(%missing, "downloading");
            download(&cache, &text, &options.revision)
        }
    }
}

/// The cache folder of model `id` (`models--ORG--NAME`).
pub fn repo_folder(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

/// The snapshot of `id` at `revision` in `cache` when it holds a whole model (`Ok(Ok(dir))`),
/// or what it lacks (`Ok(Err(missing))`).
fn cached_snapshot(
    cache: &Path,
    id: &str,
    revision: &str,
) -> Result<std::result::Result<PathBuf, String>> {
    let repo = repo_folder(cache, id);
    if !repo.is_dir() {
        return Ok(Err(format!("no folder {}", repo.display())));
    }
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        let reference = repo.join("refs").join(revision);
        if revision
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Ok(Err(format!(
                "revision {revision:?} is not a branch or tag name"
            )));
        }
        match std::fs::read_to_string(&reference) {
            Ok(hash) if is_commit_hash(hash.trim()) => hash.trim().to_string(),
            Ok(hash) => {
                return Ok(Err(format!(
                    "{} holds {:?}, not a commit hash",
                    reference.display(),
                    hash.trim()
                )));
            }
            Err(_) => return Ok(Err(format!("no {}", reference.display()))),
        }
    };
    let snapshot = repo.join("snapshots").join(&commit);
    let missing = missing_files(&snapshot)?;
    Ok(if missing.is_empty() {
        Ok(snapshot)
    } else {
        Err(format!(
            "{} lacks {}",
            snapshot.display(),
            missing.join(", ")
        ))
    })
}

/// Whether `s` is a full commit hash (40 lowercase hex digits).
fn is_commit_hash(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// The files a snapshot folder lacks to be a whole checkpoint: the config and the weights
/// (one file, or the index and every shard it lists).
fn missing_files(snapshot: &Path) -> Result<Vec<String>> {
    let mut missing: Vec<String> = REQUIRED
        .iter()
        .filter(|f| !snapshot.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    if snapshot.join("model.safetensors").is_file() {
        return Ok(missing);
    }
    let index = snapshot.join("model.safetensors.index.json");
    if !index.is_file() {
        missing.push("model.safetensors (or model.safetensors.index.json)".into());
        return Ok(missing);
    }
    for shard in shards(&index)? {
        if !snapshot.join(&shard).is_file() {
            missing.push(shard);
        }
    }
    Ok(missing)
}

/// The shard files an index lists, each once, in order.
fn shards(index: &Path) -> Result<Vec<String>> {
    let value = patch_checkpoint::files::read_json(index)?;
    let mut files: Vec<String> = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Downloads what a checkpoint needs of `id` at `revision` into `cache` and returns its
/// snapshot folder.
fn download(cache: &Path, id: &str, revision: &str) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let failed = |file: &str, message: String| Error::Download {
        id: id.to_string(),
        file: file.to_string(),
        message,
    };
    let api = ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| failed("(client)", e.to_string()))?;
    let repo = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let get = |file: &str| repo.get(file).map_err(|e| failed(file, e.to_string()));
    let config = get("config.json")?;
    let snapshot = config.parent().map(Path::to_path_buf).ok_or_else(|| {
        failed(
            "config.json",
            "the cache gave a path without a folder".into(),
        )
    })?;
    match get("model.safetensors.index.json") {
        Ok(index) => {
            for shard in shards(&index)? {
                get(&shard)?;
            }
        }
        Err(_) => {
            get("model.safetensors")?;
        }
    }
    for file in OPTIONAL {
        if let Err(e) = get(file) {
            tracing::debug!(%file, error = %e, "optional file not downloaded");
        }
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_org_slash_name() {
        for id in [
            "Qwen/Qwen3-30B-A3B",
            "gpt2",
            "meta-llama/Llama-3.2-1B",
            "a_b/c.d",
        ] {
            assert!(is_hub_id(id), "{id}");
        }
        for id in [
            "", "/abs", "a/b/c", "../x", "a/..", "a--b/c", "a/b.", "-a/b", "a b/c", "a/",
        ] {
            assert!(!is_hub_id(id), "{id}");
        }
    }
}
