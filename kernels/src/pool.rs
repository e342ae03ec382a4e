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
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle helper keeps polling before it parks.
const SPIN: Duration = Duration::from_micros(1000);
/// Polls between two `yield_now` of an idle helper.
const POLLS_PER_YIELD: u32 = 64;

/// `state`: the job's generation in the high 32 bits, bit 31 set once the job is closed to
/// new helpers, the number of helpers that joined it in the low 31 bits.
const CLOSED: u64 = 1 << 31;
const JOINED: u64 = CLOSED - 1;

/// The job being run: `f(i)` for every `i < tasks`, erased to a raw pointer; it is only
/// dereferenced by helpers that joined the job, and the caller waits for those before
/// returning, so the borrow it came from outlives every use.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
}

struct Shared {
    state: AtomicU64,
    job: UnsafeCell<Job>,
    next: AtomicUsize,
    finished: AtomicUsize,
    sleeping: Vec<AtomicBool>,
    threads: OnceLock<Vec<Thread>>,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `job` is written only by the caller holding `Pool::call`, before it publishes the
// new generation with release ordering, and read only by helpers that acquired that
// generation and joined (see `Job`); every other field is atomic or locked.
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
            state: AtomicU64::new(0),
            job: UnsafeCell::new(Job {
                f: &noop as &(dyn Fn(usize) + Sync),
                tasks: 0,
            }),
            next: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
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
    // SAFETY: only this caller (holding `call`) writes `job`, and no helper reads it before
    // the new generation is published below; the lifetime is erased, see `Job`.
    unsafe {
        *s.job.get() = Job {
            f: std::mem::transmute::<&(dyn Fn(usize) + Sync), *const (dyn Fn(usize) + Sync)>(f),
            tasks,
        };
    }
    s.next.store(0, Ordering::Relaxed);
    s.finished.store(0, Ordering::Relaxed);
    s.state.store((*generation as u64) << 32, Ordering::SeqCst);
    if let Some(threads) = s.threads.get() {
        for (t, asleep) in threads.iter().zip(&s.sleeping) {
            if asleep.load(Ordering::SeqCst) {
                t.unpark();
            }
        }
    }
    let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(s, f, tasks)));
    // Close the job to late helpers, then wait for those that joined.
    let joined = (s.state.fetch_or(CLOSED, Ordering::AcqRel) & JOINED) as usize;
    while s.finished.load(Ordering::Acquire) != joined {
        std::hint::spin_loop();
    }
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
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= tasks {
            break;
        }
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
        let state = loop {
            let st = s.state.load(Ordering::Acquire);
            if st >> 32 != seen {
                break st;
            }
            polls += 1;
            if !polls.is_multiple_of(POLLS_PER_YIELD) {
                std::hint::spin_loop();
            } else if idle_since.elapsed() < SPIN {
                std::thread::yield_now();
            } else {
                s.sleeping[id].store(true, Ordering::SeqCst);
                if s.state.load(Ordering::SeqCst) >> 32 == seen {
                    std::thread::park();
                }
                s.sleeping[id].store(false, Ordering::SeqCst);
                idle_since = Instant::now();
            }
        };
        seen = state >> 32;
        // Join unless the caller already closed the job.
        let mut cur = state;
        let joined = loop {
            if cur >> 32 != seen || cur & CLOSED != 0 {
                break false;
            }
            match s
                .state
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(now) => cur = now,
            }
        };
        if !joined {
            continue;
        }
        // SAFETY: this helper joined the open job of generation `seen`, so `job` holds that
        // job and its closure stays alive until `finished` counts this helper.
        let job = unsafe { *s.job.get() };
        let f = unsafe { &*job.f };
        if let Err(p) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(s, f, job.tasks)))
        {
            let mut slot = s.panic.lock().unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert(p);
        }
        s.finished.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
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
}
