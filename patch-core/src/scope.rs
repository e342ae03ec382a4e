//! `apply_patches`: patches for models built by hand, scoped to the current thread (the
//! guard), and [`PatchSet::scope`] for a closure over a given set.
//!
//! Upstream swaps classes process-wide while the block runs; here the scope is a thread-local
//! stack of [`PatchSet`]s, so two threads building models never see each other's scope.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::PatchSet;

thread_local! {
    static SCOPES: RefCell<Vec<(u64, PatchSet)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_SCOPE: AtomicU64 = AtomicU64::new(1);

/// The innermost scope's set on this thread.
pub(crate) fn current() -> Option<PatchSet> {
    SCOPES.with(|s| s.borrow().last().map(|(_, set)| set.clone()))
}

/// While alive, models built by hand on this thread use its [`PatchSet`]. Dropping it ends
/// the scope. It cannot leave its thread.
#[must_use = "the scope ends when this guard is dropped"]
pub struct PatchScope {
    id: u64,
    _not_send: PhantomData<*const ()>,
}

impl Drop for PatchScope {
    fn drop(&mut self) {
        let id = self.id;
        // A thread-local being torn down at thread exit has nothing left to pop.
        let _ = SCOPES.try_with(|s| s.borrow_mut().retain(|(sid, _)| *sid != id));
    }
}

impl std::fmt::Debug for PatchScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchScope").field("id", &self.id).finish()
    }
}

impl PatchSet {
    /// Makes this set the one models built by hand on this thread use, until the guard drops.
    pub fn enter(&self) -> PatchScope {
        let id = NEXT_SCOPE.fetch_add(1, Ordering::Relaxed);
        SCOPES.with(|s| s.borrow_mut().push((id, self.clone())));
        PatchScope {
            id,
            _not_send: PhantomData,
        }
    }

    /// Runs `f` with this set as the current thread's scope.
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.enter();
        f()
    }
}

/// Enters a scope holding the registered patches as they are now: models built by hand on
/// this thread use them until the guard drops (guard form of transformers' `apply_patches`).
///
/// ```
/// # use patch_core::apply_patches;
/// let _patches = apply_patches();
/// // models built by hand here use the registered patches
/// ```
pub fn apply_patches() -> PatchScope {
    PatchSet::global().enter()
}
