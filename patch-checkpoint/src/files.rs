//! Files as untrusted input, and outputs that never destroy anything.
//!
//! Reading checks that a path is a regular file before opening it (opening a FIFO blocks until
//! a writer comes; a device can be endless) and bounds how much JSON is read. Writing goes to a
//! new temporary file in the destination folder, created exclusively (a link planted under its
//! name is not followed), and is renamed over the target only once every byte is written and
//! synced; a target that is a symbolic link, not a regular file, or one of the command's
//! inputs is refused before anything is written.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// The largest JSON file read (`config.json`, an index, a tokenizer config): 256 MiB, over
/// ten times the index of a 200,000-tensor checkpoint.
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// An [`Error::Io`] for `path`.
pub fn io_error(path: &Path, action: &'static str, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        action,
        source,
    }
}

/// An [`Error::Malformed`] for `path`.
pub fn malformed(path: &Path, message: impl Into<String>) -> Error {
    Error::Malformed {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// An [`Error::Output`] for `path`.
fn refused(path: &Path, message: impl Into<String>) -> Error {
    Error::Output {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// What kind of thing a file type is, for messages.
fn describe(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a folder"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Checks that `path` (links followed: the HF cache links snapshots to blobs) is a regular
/// file and returns its length; nothing is opened.
pub fn regular_file(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, "cannot read", e))?;
    if !meta.is_file() {
        return Err(malformed(
            path,
            format!(
                "is {}, not a regular file: only regular files are read",
                describe(meta.file_type())
            ),
        ));
    }
    Ok(meta.len())
}

/// Opens `path` for reading once [`regular_file`] says it is one; returns it with its length.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let len = regular_file(path)?;
    let file = File::open(path).map_err(|e| io_error(path, "cannot open", e))?;
    Ok((file, len))
}

/// Reads the regular file `path` whole, refusing one longer than `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > limit {
        return Err(malformed(
            path,
            format!("is {len} bytes long, over the {limit}-byte limit for this file"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The length can change after the check; the read is bounded anyway.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, "cannot read", e))?;
    if bytes.len() as u64 > limit {
        return Err(malformed(
            path,
            format!("grew over the {limit}-byte limit for this file while read"),
        ));
    }
    Ok(bytes)
}

/// Reads and parses a JSON file of at most [`MAX_JSON_BYTES`].
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = read_bounded(path, MAX_JSON_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| malformed(path, format!("invalid JSON: {e}")))
}

/// Whether `a` and `b` are the same file (same device and inode on Unix, same canonical path
/// elsewhere); false when either does not exist.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (a.canonicalize(), b.canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
}

/// Checks that `path` may be written: absent, or a regular file that is not a symbolic link
/// and is none of `inputs` (the files the same command reads).
pub fn check_output(path: &Path, inputs: &[&Path]) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(refused(
                path,
                "is a symbolic link: refusing to write through it (give the path it points to)",
            ));
        }
        Ok(meta) if !meta.is_file() => {
            return Err(refused(
                path,
                format!(
                    "is {}: refusing to replace it with a file",
                    describe(meta.file_type())
                ),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path, "cannot inspect", e)),
    }
    if let Some(input) = inputs.iter().find(|input| same_file(path, input)) {
        return Err(refused(
            path,
            format!(
                "is also an input ({}): refusing to overwrite what is being read",
                input.display()
            ),
        ));
    }
    Ok(())
}

/// A file being written under a temporary name in its destination folder, renamed into place
/// by [`PendingFile::commit`]; dropped uncommitted, the temporary is removed and the target
/// is untouched.
#[derive(Debug)]
pub struct PendingFile {
    target: PathBuf,
    temporary: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl PendingFile {
    /// Starts writing `target` after [`check_output`]`(target, inputs)`: a new temporary file
    /// beside it, created exclusively.
    pub fn create(target: &Path, inputs: &[&Path]) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        check_output(target, inputs)?;
        let name = target
            .file_name()
            .ok_or_else(|| refused(target, "names no file"))?
            .to_string_lossy()
            .into_owned();
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let temporary = dir.join(format!(
            ".{name}.{}-{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .map_err(|e| io_error(&temporary, "cannot create", e))?;
        Ok(Self {
            target: target.to_path_buf(),
            temporary,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The file it will become.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| refused(&self.target, "written after it was finished"))?;
        w.write_all(bytes)
            .map_err(|e| io_error(&self.temporary, "cannot write", e))
    }

    /// Flushes and syncs the temporary file, leaving it ready to be renamed.
    fn finish_writing(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            let file = w
                .into_inner()
                .map_err(|e| io_error(&self.temporary, "cannot write", e.into_error()))?;
            file.sync_all()
                .map_err(|e| io_error(&self.temporary, "cannot sync", e))?;
        }
        Ok(())
    }

    /// Writes everything out and renames the temporary over the target (re-checked first: it
    /// must still be absent or a regular file).
    pub fn commit(mut self) -> Result<()> {
        self.finish_writing()?;
        check_output(&self.target, &[])?;
        std::fs::rename(&self.temporary, &self.target)
            .map_err(|e| io_error(&self.target, "cannot rename the written file into place", e))?;
        self.temporary = PathBuf::new();
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.temporary.as_os_str().is_empty() {
            drop(self.writer.take());
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Files written together: each is complete under a temporary name before any is renamed into
/// place, in the order they were added (so a config added last appears last).
#[derive(Debug, Default)]
pub struct PendingFiles {
    files: Vec<PendingFile>,
}

impl PendingFiles {
    /// No files yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a written file.
    pub fn push(&mut self, file: PendingFile) {
        self.files.push(file);
    }

    /// Finishes every file, then renames them into place in order.
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        for f in &mut self.files {
            f.finish_writing()?;
        }
        let mut done = Vec::with_capacity(self.files.len());
        for f in self.files.drain(..) {
            done.push(f.target.clone());
            f.commit()?;
        }
        Ok(done)
    }
}

/// Writes `bytes` to `path` atomically (see the module docs), refusing any of `inputs`.
pub fn write_atomically(path: &Path, bytes: &[u8], inputs: &[&Path]) -> Result<()> {
    let mut file = PendingFile::create(path, inputs)?;
    file.write_all(bytes)?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        {
            let mut f = PendingFile::create(&target, &[]).unwrap();
            f.write_all(b"new").unwrap();
            // Dropped without commit.
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomically(&target, b"new", &[]).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn links_non_regular_targets_and_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let e = write_atomically(&link, b"x", &[]).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        let e = write_atomically(dir.path(), b"x", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("a folder"), "{e}");
        let e = write_atomically(&outside, b"x", &[&outside])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is also an input"), "{e}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        let e = regular_file(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a device"), "{e}");
    }
}
