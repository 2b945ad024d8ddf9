//! Fork–join for the host kernels that generated code calls: one process-wide set of
//! worker threads that spin between calls and sleep when idle.
//!
//! Why not rayon (through the GEMM crate's own threading): a training step of W3 makes
//! about 150 matrix products of 0.1–1 ms each, with elementwise code between them. Rayon
//! put its threads to sleep between them and woke them per product; at 2 threads a fifth
//! of the time went to the kernel's scheduler and the step got slower than at 1. Here a
//! worker spins for [`SPIN`] after its last part before it sleeps, so the products of one
//! call follow each other without a system call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// A posted task: part `i` of it runs on worker `i` (the caller runs part 0).
#[derive(Clone, Copy)]
struct Task(*const (dyn Fn(usize) + Sync));

// SAFETY: a `Task` points to a `Sync` closure that outlives every use: `run` does not
// return before each worker has finished with it.
unsafe impl Send for Task {}

struct Pool {
    /// Number of worker threads (parts beyond the caller's own), set once they run.
    workers: AtomicUsize,
    /// One fork–join at a time; a caller that finds it taken runs all its parts itself.
    submit: Mutex<()>,
    task: Mutex<Option<Task>>,
    /// Bumped once per posted task; workers wait for it to change.
    epoch: AtomicUsize,
    /// Workers still running the current task.
    remaining: AtomicUsize,
    /// Whether any worker sleeps on `wake` (so the poster must notify).
    sleeping: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
}

static POOL: OnceLock<&'static Pool> = OnceLock::new();

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let wanted = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers: AtomicUsize::new(0),
            submit: Mutex::new(()),
            task: Mutex::new(None),
            epoch: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }));
        // No task is posted before this function returns, so workers may start late; one
        // that cannot be spawned is simply not counted (and its parts run on the caller).
        let spawned = (1..=wanted)
            .take_while(|&i| {
                std::thread::Builder::new()
                    .name(format!("lstmc-worker-{i}"))
                    .spawn(move || pool.work(i))
                    .is_ok()
            })
            .count();
        pool.workers.store(spawned, Ordering::Relaxed);
        pool
    })
}

impl Pool {
    fn work(&self, index: usize) {
        let mut seen = 0;
        loop {
            seen = self.wait_for_task(seen);
            let task = *self.task.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(Task(f)) = task {
                // SAFETY: see `Task`; the poster waits for `remaining` to reach zero.
                let f = unsafe { &*f };
                // A panic must not leave the poster waiting: count the part done either way.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index)));
            }
            self.remaining.fetch_sub(1, Ordering::Release);
        }
    }

    /// Spins, then sleeps, until the epoch differs from `seen`; returns the new epoch.
    fn wait_for_task(&self, seen: usize) -> usize {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            if epoch != seen {
                return epoch;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) || start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.sleeping.store(true, Ordering::SeqCst);
            while self.epoch.load(Ordering::SeqCst) == seen {
                guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            drop(guard);
        }
    }

    fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match self.submit.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return (0..parts).for_each(f),
        };
        // SAFETY (of the lifetime erasure): `f` is used by the workers only until
        // `remaining` reaches zero, which this function waits for before returning.
        let task: *const (dyn Fn(usize) + Sync) = f;
        let task = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                task,
            )
        };
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(Task(task));
        self.remaining
            .store(self.workers.load(Ordering::Relaxed), Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let _sleep = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.sleeping.store(false, Ordering::SeqCst);
            self.wake.notify_all();
        }
        // The workers use `f` until they are done, so part 0 must not unwind past this.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        while self.remaining.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
        drop(guard);
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
    }
}

/// How many parts [`run`] can run at once when asked for `threads`.
pub(super) fn parts(threads: usize) -> usize {
    if threads <= 1 {
        1
    } else {
        threads.min(pool().workers.load(Ordering::Relaxed) + 1)
    }
}

/// Runs `f(0)` … `f(parts - 1)`, part 0 on the calling thread and the others on the
/// workers, and returns when all have finished. `parts` must come from [`parts`].
pub(super) fn run(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 {
        return (0..parts).for_each(f);
    }
    let pool = pool();
    pool.run(parts, &|i| {
        if i < parts {
            f(i)
        }
    });
}
