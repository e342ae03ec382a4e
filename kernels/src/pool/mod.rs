//! The threads the kernels run on: the calling thread plus `rayon::current_num_threads() - 1`
//! helpers that spin briefly between jobs.
//!
//! A decoding step is a chain of short products (a few hundred microseconds each) separated
//! by small serial work. A pool whose workers go to sleep as soon as they are idle (rayon's)
//! pays a wake-up per product, and the caller waits for it; here the caller always works on
//! its own share at once, helpers that are awake join, and a helper keeps polling for about a
//! millisecond after its last job (yielding the core to other runnable threads while it does)
//! before it parks. A job never waits for a parked helper: whoever is awake does the tasks.

use std::any::Any;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

mod job;

use job::Slot;

/// The atomics and cell the job protocol runs on (`job.rs`; its model test swaps in loom's).
mod sync {
    pub(super) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// `std`'s `UnsafeCell` with loom's access API.
    pub(super) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(super) fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        pub(super) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        pub(super) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// One turn of a wait loop.
    pub(super) fn spin() {
        std::hint::spin_loop();
    }
}

/// How long an idle helper keeps polling before it parks.
const SPIN: Duration = Duration::from_micros(1000);
/// Polls between two `yield_now` of an idle helper.
const POLLS_PER_YIELD: u32 = 64;

/// The job being run: `f(i)` for every `i < tasks`, the closure's lifetime erased. `job.rs`
/// says why it is never dereferenced after the closure is gone.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
}

struct Shared {
    slot: Slot<Job>,
    sleeping: Vec<AtomicBool>,
    threads: OnceLock<Vec<Thread>>,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: the only non-thread-safe parts are the slot's job cell and the raw closure pointer
// in it, written and read under the protocol in `job.rs`; every other field is atomic or locked.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

struct Pool {
    shared: &'static Shared,
    helpers: usize,
    call: Mutex<u32>,
}

thread_local! {
    /// Set on helper threads and inside tasks: a nested call runs serially.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            slot: Slot::new(Job {
                f: &noop as &(dyn Fn(usize) + Sync),
                tasks: 0,
            }),
            sleeping: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
            panic: Mutex::new(None),
        }));
        let mut threads = Vec::with_capacity(helpers);
        for id in 0..helpers {
            let spawned = std::thread::Builder::new()
                .name(format!("patchwork-kernel-{id}"))
                .spawn(move || helper(shared, id));
            match spawned {
                Ok(handle) => threads.push(handle.thread().clone()),
                // No thread: the pool runs with the helpers it got (the caller alone at worst).
                Err(_) => break,
            }
        }
        let helpers = threads.len();
        let _ = shared.threads.set(threads);
        Pool {
            shared,
            helpers,
            call: Mutex::new(0),
        }
    })
}

/// Runs `f(i)` for every `i < tasks`, on the calling thread and the pool's helpers; returns
/// when all are done. Serial when there is one task, no helper, a call in progress on another
/// thread, or when called from inside a task. A panic in a task is re-raised here.
///
/// Kept over rayon and `std::thread::scope` by measurement (PERFORMANCE.md): on the Llama bench
/// shape, rayon's `for_each` decodes at 0.74x and prefills at 0.91x of this pool's speed, a
/// scope of fresh threads per call at 0.82x and 0.78x.
pub(crate) fn parallel_for(tasks: usize, f: impl Fn(usize) + Sync) {
    if tasks <= 1 || IN_POOL.with(Cell::get) {
        (0..tasks).for_each(f);
        return;
    }
    let pool = pool();
    let Ok(mut generation) = pool.call.try_lock() else {
        (0..tasks).for_each(f);
        return;
    };
    if pool.helpers == 0 {
        (0..tasks).for_each(f);
        return;
    }
    let s = pool.shared;
    *generation = generation.wrapping_add(1).max(1);
    let f: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY: the lifetime is erased here and restored by the protocol (`job.rs`): helpers
    // dereference the pointer only between joining and leaving this job, and `close` below
    // returns only after every helper that joined has left, so `f` outlives every use.
    let erased =
        unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), *const (dyn Fn(usize) + Sync)>(f) };
    // SAFETY: this caller holds `call` (one caller at a time), and the previous job was closed
    // before its caller released `call`.
    unsafe { s.slot.open(*generation, Job { f: erased, tasks }) };
    if let Some(threads) = s.threads.get() {
        for (t, asleep) in threads.iter().zip(&s.sleeping) {
            if asleep.load(Ordering::SeqCst) {
                t.unpark();
            }
        }
    }
    let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(s, f, tasks)));
    s.slot.close();
    let helper_panic = s
        .panic
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    drop(generation);
    if let Err(p) = mine {
        std::panic::resume_unwind(p);
    }
    if let Some(p) = helper_panic {
        std::panic::resume_unwind(p);
    }
}

fn noop(_: usize) {}

fn run_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync), tasks: usize) {
    let was = IN_POOL.with(|c| c.replace(true));
    while let Some(i) = s.slot.take(tasks) {
        f(i);
    }
    IN_POOL.with(|c| c.set(was));
}

fn helper(s: &'static Shared, id: usize) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        // Wait for a new generation: poll, yielding now and then, then park.
        let mut idle_since = Instant::now();
        let mut polls = 0u32;
        seen = loop {
            let generation = s.slot.generation();
            if generation != seen {
                break generation;
            }
            polls += 1;
            if !polls.is_multiple_of(POLLS_PER_YIELD) {
                std::hint::spin_loop();
            } else if idle_since.elapsed() < SPIN {
                std::thread::yield_now();
            } else {
                s.sleeping[id].store(true, Ordering::SeqCst);
                if s.slot.generation() == seen {
                    std::thread::park();
                }
                s.sleeping[id].store(false, Ordering::SeqCst);
                idle_since = Instant::now();
            }
        };
        let Some(job) = s.slot.join(seen) else {
            continue;
        };
        // SAFETY: joined and not yet left: the closure is alive (`job.rs`).
        let f = unsafe { &*job.f };
        if let Err(p) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(s, f, job.tasks)))
        {
            let mut slot = s.panic.lock().unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert(p);
        }
        s.slot.leave();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn every_task_runs_once_and_nested_calls_are_serial() {
        for tasks in [0, 1, 2, 3, 17, 1000] {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            parallel_for(tasks, |i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
                let inner = AtomicUsize::new(0);
                parallel_for(3, |_| {
                    inner.fetch_add(1, Ordering::Relaxed);
                });
                assert_eq!(inner.load(Ordering::Relaxed), 3);
            });
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "{tasks}"
            );
        }
    }

    #[test]
    fn calls_from_several_threads_all_complete() {
        std::thread::scope(|scope| {
            for t in 0..4 {
                scope.spawn(move || {
                    for round in 0..200 {
                        let sum = AtomicUsize::new(0);
                        parallel_for(8, |i| {
                            sum.fetch_add(i, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), 28, "thread {t} round {round}");
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_task_panics_the_caller() {
        let r = std::panic::catch_unwind(|| {
            parallel_for(4, |i| {
                if i == 2 {
                    panic!("task 2");
                }
            })
        });
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        parallel_for(5, |_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 5);
    }

    /// The job protocol (`job.rs`) over loom's atomics: every interleaving of a caller running
    /// two jobs in turn and a helper joining whichever it sees. loom fails the test on an
    /// access to the job cell that is not ordered after the write it reads (or before the
    /// next write), and the tasks must each run once.
    #[test]
    fn the_job_protocol_under_every_interleaving() {
        loom::model(|| {
            use loom::sync::Arc;
            use loom::sync::atomic::{AtomicUsize, Ordering};

            let slot = Arc::new(model::job::Slot::new(0usize));
            let runs: Arc<[AtomicUsize; 3]> =
                Arc::new(std::array::from_fn(|_| AtomicUsize::new(0)));
            let helper = {
                let (slot, runs) = (slot.clone(), runs.clone());
                loom::thread::spawn(move || {
                    let seen = loop {
                        let g = slot.generation();
                        if g != 0 {
                            break g;
                        }
                        loom::thread::yield_now();
                    };
                    if let Some(tasks) = slot.join(seen) {
                        while let Some(i) = slot.take(tasks) {
                            runs[i].fetch_add(1, Ordering::Relaxed);
                        }
                        slot.leave();
                    }
                })
            };
            // SAFETY: one caller; the slot starts with nothing open.
            unsafe { slot.open(1, 3) };
            while let Some(i) = slot.take(3) {
                runs[i].fetch_add(1, Ordering::Relaxed);
            }
            slot.close();
            // The next job reuses the cell at once, as the next parallel loop does.
            // SAFETY: one caller; job 1 is closed.
            unsafe { slot.open(2, 0) };
            slot.close();
            helper.join().unwrap();
            for r in runs.iter() {
                assert_eq!(r.load(Ordering::Relaxed), 1);
            }
        });
    }
}

/// The job protocol compiled over loom's atomics for its model test.
#[cfg(test)]
mod model {
    mod sync {
        pub(super) use loom::cell::UnsafeCell;
        pub(super) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

        pub(super) fn spin() {
            loom::thread::yield_now();
        }
    }

    pub(super) mod job {
        include!("job.rs");
    }
}
