//! Progress of the long operations (reading a checkpoint's tensors, writing them), told to a
//! callback so a front end can draw it (the CLI draws a bar on a terminal only).

use std::fmt;
use std::sync::Arc;

/// Which operation a [`ProgressEvent`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading and converting a checkpoint's tensors.
    Load,
    /// Writing tensors to safetensors files.
    Save,
}

/// How far an operation is: `done` of `total` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressEvent {
    /// The operation.
    pub stage: Stage,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// A progress callback, cheap to clone.
#[derive(Clone)]
pub struct Progress(Arc<dyn Fn(ProgressEvent) + Send + Sync>);

impl Progress {
    /// A callback.
    pub fn new(f: impl Fn(ProgressEvent) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Tells the callback.
    pub fn report(&self, stage: Stage, done: u64, total: u64) {
        (self.0)(ProgressEvent { stage, done, total });
    }
}

/// Two callbacks are equal when they are the same callback.
impl PartialEq for Progress {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Progress {}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Progress(..)")
    }
}
