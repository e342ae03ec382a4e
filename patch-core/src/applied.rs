//! `apply_patches`: patches applied to models built by hand on the current thread, while a
//! guard lives ([`AppliedPatches`]) or a closure runs ([`PatchSet::run_with`]).
//!
//! Upstream swaps classes process-wide while the block runs; here what is applied is a
//! thread-local stack of [`PatchSet`]s, so two threads building models never see each other's.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::PatchSet;

thread_local! {
    static APPLIED: RefCell<Vec<(u64, PatchSet)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_APPLIED: AtomicU64 = AtomicU64::new(1);

/// The set applied last on this thread, while it is applied.
pub(crate) fn current() -> Option<PatchSet> {
    APPLIED.with(|s| s.borrow().last().map(|(_, set)| set.clone()))
}

/// While alive, models built by hand on this thread use its [`PatchSet`]. Dropping it ends
/// the application. It cannot leave its thread.
#[must_use = "the patches stop applying when this guard is dropped"]
pub struct AppliedPatches {
    id: u64,
    _not_send: PhantomData<*const ()>,
}

impl Drop for AppliedPatches {
    fn drop(&mut self) {
        let id = self.id;
        // A thread-local being torn down at thread exit has nothing left to pop.
        let _ = APPLIED.try_with(|s| s.borrow_mut().retain(|(sid, _)| *sid != id));
    }
}

impl std::fmt::Debug for AppliedPatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppliedPatches")
            .field("id", &self.id)
            .finish()
    }
}

impl PatchSet {
    /// Makes this set the one models built by hand on this thread use, until the guard drops.
    pub fn enter(&self) -> AppliedPatches {
        let id = NEXT_APPLIED.fetch_add(1, Ordering::Relaxed);
        APPLIED.with(|s| s.borrow_mut().push((id, self.clone())));
        AppliedPatches {
            id,
            _not_send: PhantomData,
        }
    }

    /// Runs `f` with this set applied to models built by hand on this thread (the closure
    /// form of [`PatchSet::enter`]). For the registered patches, the set is
    /// [`PatchSet::global()`]:
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use patch_core::checkpoint::{RandomInit, Weights};
    /// use patch_core::{Builder, PatchSet};
    ///
    /// let weights = Weights::new(RandomInit::new(0, 0.02), DType::F32, &Device::Cpu);
    /// // Inside, a model built by hand (`LlamaForCausalLM::build(&b, &config)`) gets the
    /// // registered patches, as `from_pretrained` does.
    /// let applied = PatchSet::global().run_with(|| Builder::new(weights).patches().records().len());
    /// assert_eq!(applied, PatchSet::global().records().len());
    /// ```
    pub fn run_with<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.enter();
        f()
    }
}

/// Applies the registered patches as they are now: models built by hand on
/// this thread use them until the guard drops (guard form of transformers' `apply_patches`).
///
/// ```
/// # use patch_core::apply_patches;
/// let _patches = apply_patches();
/// // models built by hand here use the registered patches
/// ```
pub fn apply_patches() -> AppliedPatches {
    PatchSet::global().enter()
}
