// The job slot's protocol, between the one caller of a parallel loop and the helpers that join
// it. This file is compiled twice: in the pool, over `std`'s atomics, and in the pool's model
// test, over loom's, which runs every interleaving of a caller and a helper and fails on any
// unsynchronized access to the job (`super::sync` names which).
//
// Why the job is never read after its closure is gone (what `parallel_for` relies on when it
// erases the closure's lifetime):
//
// 1. Only the caller holding the pool's call lock writes `job`, in `open`, and it does so
//    before the SeqCst store that publishes the new generation (a release).
// 2. A helper reads `job` only in `join`, right after its compare-exchange moved the state of
//    that generation, open, from `cur` to `cur + 1` (an acquire of the caller's store: it sees
//    the job written in 1). A helper that lost the race, saw another generation or saw the job
//    closed does not read it.
// 3. The caller's `close` sets CLOSED with one read-modify-write, so the count of helpers that
//    joined is fixed from then on (a later compare-exchange fails: the state changed), and
//    waits until `finished` equals that count. A helper increments `finished` (a release) only
//    after its last use of the job and of the closure; the caller's acquire load sees it.
// 4. So when `close` returns, no helper holds or will read this job, and the caller may return
//    (dropping the closure) or `open` the next one.
//
// The generation is 32 bits: a helper that stalls between reading the state and its
// compare-exchange for exactly 2^32 calls with the same join count could join a later job
// thinking it is the earlier one; it would still read a job published under rule 1.

use super::sync::{AtomicU64, AtomicUsize, Ordering, UnsafeCell, spin};

/// `state`: bit 31 set once the job is closed to new helpers.
const CLOSED: u64 = 1 << 31;
/// `state`: the number of helpers that joined the job, in the low 31 bits.
const JOINED: u64 = CLOSED - 1;

/// The job being run and who is in it.
pub(crate) struct Slot<J> {
    /// The job's generation in the high 32 bits, [`CLOSED`], the helpers that joined.
    state: AtomicU64,
    job: UnsafeCell<J>,
    /// The next task index to hand out.
    next: AtomicUsize,
    /// Helpers that joined and are done.
    finished: AtomicUsize,
}

impl<J: Copy> Slot<J> {
    /// A slot holding `idle` (never run: generation 0 is never opened).
    pub(crate) fn new(idle: J) -> Self {
        Self {
            state: AtomicU64::new(0),
            job: UnsafeCell::new(idle),
            next: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
        }
    }

    /// Publishes `job` as generation `generation` (not 0), open to helpers.
    ///
    /// # Safety
    /// One caller at a time, and the previous job (if any) was closed by [`Slot::close`].
    pub(crate) unsafe fn open(&self, generation: u32, job: J) {
        // SAFETY: rule 1 and 4 above: no helper reads `job` now.
        self.job.with_mut(|p| unsafe { *p = job });
        self.next.store(0, Ordering::Relaxed);
        self.finished.store(0, Ordering::Relaxed);
        self.state
            .store(u64::from(generation) << 32, Ordering::SeqCst);
    }

    /// The generation last published (0 before any).
    pub(crate) fn generation(&self) -> u64 {
        self.state.load(Ordering::Acquire) >> 32
    }

    /// Joins the job of generation `seen` if it is still open, and returns it; `None` when it
    /// was closed or replaced. A helper that got `Some` must call [`Slot::leave`] once done.
    pub(crate) fn join(&self, seen: u64) -> Option<J> {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur >> 32 != seen || cur & CLOSED != 0 {
                return None;
            }
            match self.state.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                // SAFETY: rule 2 above.
                Ok(_) => return Some(self.job.with(|p| unsafe { *p })),
                Err(now) => cur = now,
            }
        }
    }

    /// The next task index below `tasks` for whoever is in the job, `None` once all are taken.
    pub(crate) fn take(&self, tasks: usize) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < tasks).then_some(i)
    }

    /// A helper that joined is done with the job.
    pub(crate) fn leave(&self) {
        self.finished.fetch_add(1, Ordering::Release);
    }

    /// Closes the job to late helpers and waits for the ones that joined to leave (rule 3).
    pub(crate) fn close(&self) {
        let joined = (self.state.fetch_or(CLOSED, Ordering::AcqRel) & JOINED) as usize;
        while self.finished.load(Ordering::Acquire) != joined {
            spin();
        }
    }
}
