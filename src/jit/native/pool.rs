//! Fork–join for the host kernels that generated code calls: one process-wide set of
//! worker threads that spin between calls and sleep when idle.
//!
//! Why not rayon (through the GEMM crate's own threading): a training step of W3 makes
//! about 150 matrix products of 0.1–1 ms each, with elementwise code between them. Rayon
//! put its threads to sleep between them and woke them per product; at 2 threads a fifth
//! of the time went to the kernel's scheduler and the step got slower than at 1. Here a
//! worker spins for [`SPIN`] after its last part before it sleeps, so the products of one
//! call follow each other without a system call.
//!
//! A fork–join costs what moving its cache lines between cores costs: the poster's line
//! (the task and its epoch, read by every worker) and each worker's line (the epoch it has
//! finished, read by the poster). The first version also kept the task behind a mutex
//! that each worker locked to read it and the poster locked again to clear it, and one
//! count of running workers that all of them decremented: an empty fork–join at two
//! threads took 0.22 µs (0.90 µs for an hour in which the host placed the two virtual CPUs
//! farther apart), this one 0.10 µs (0.53 µs).
//!
//! Where the host puts the workers' cores matters more than the protocol: on far cores
//! (another core complex), the cache lines that batch-1 parts hand over cost more than
//! the split saves. So the pool measures the placement now and then ([`Pool::far`]), and
//! while the workers are far, it runs the parts of small fork–joins ([`Handoff::WhenNear`])
//! on the caller, one after another: the same parts, so the same results. A compiled
//! function's calls do better: they time themselves both ways (`choose.rs`) and set the
//! placement of their own fork–joins ([`with_placement`]).

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// A probe ([`Pool::probe`]) slower than this means the workers' cores are far from the
/// caller's ([`Handoff::WhenNear`]). Measured at two threads on this machine's virtual
/// CPUs, which the host places on near cores or on far ones, for seconds or minutes at
/// a time: probes took 0.08–0.24 µs near (median 0.19) and mostly 0.7–0.8 µs far; a
/// round trip of one cache line took 27–70 ns near and 330–385 ns far.
const FAR: Duration = Duration::from_nanos(400);

/// A probe slower than this measured something else than the placement.
const UNSURE: Duration = Duration::from_micros(20);

/// How often the placement is measured again, at most.
const REPROBE: Duration = Duration::from_millis(20);

/// Small fork–joins between two probes' checks of the clock.
const CHECK_EVERY: u64 = 256;

/// Whether a fork–join's parts go to the workers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Handoff {
    /// Always (large work: GEMMs and split kernels).
    Always,
    /// Only while the workers' cores are near the caller's; else the caller runs every
    /// part itself, in order. For batch-1 work (few-row products and the updates of the
    /// same weights), where a part is a microsecond or two: with the cores far apart, the
    /// cache lines the parts hand over cost more than the split saves, and two threads
    /// were slower than one (W2's forward 16–18 µs against 12.3 µs, its epoch 3.0–3.2 ms
    /// against 2.6–2.7 ms). A part computes the same thing wherever it runs, so results
    /// do not depend on where they ran.
    WhenNear,
}

/// Where the workers' cores are, as `Handoff::WhenNear` uses it: measured, or set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Placement {
    /// Measured (the default): each compiled function that makes small fork–joins times
    /// its calls both ways now and then and takes the faster (`choose.rs`); other calls
    /// follow an empty fork–join's time, probed every `REPROBE` at most.
    Measured,
    /// Taken as near: parts go to the workers.
    Near,
    /// Taken as far: the caller runs the parts of small fork–joins.
    Far,
}

/// A posted task: part `i` of it runs on worker `i` (the caller runs part 0).
#[derive(Clone, Copy)]
struct Task(*const (dyn Fn(usize) + Sync));

// SAFETY: a `Task` points to a `Sync` closure that outlives every use: `run` does not
// return before each worker has finished with it.
unsafe impl Send for Task {}

/// A value on cache lines of its own (two: the adjacent-line prefetcher pairs them).
#[repr(align(128))]
struct Line<T>(T);

/// What a poster publishes: written by the holder of `submit`, read by the workers.
struct Post {
    /// Bumped once per posted task; workers wait for it to change.
    epoch: AtomicUsize,
    /// The current task. Written only before `epoch` is bumped (with release ordering),
    /// and only after every worker has reported the previous epoch done; a worker reads it
    /// only between seeing the new epoch (acquire) and reporting it done.
    task: UnsafeCell<Option<Task>>,
}

struct Pool {
    /// Number of worker threads (parts beyond the caller's own), set once they run.
    workers: AtomicUsize,
    /// One fork–join at a time; a caller that finds it taken runs all its parts itself.
    submit: Mutex<()>,
    post: Line<Post>,
    /// Per worker, the last epoch whose part it has finished.
    done: Box<[Line<AtomicUsize>]>,
    /// Workers asleep on `wake`, or about to be (so the poster must notify). Each worker
    /// counts itself in and out under `sleep`; a poster never changes it. (A poster that
    /// cleared a flag for the workers lost a wake-up: it could clear the flag of a later
    /// sleep than the one it saw, and the next task then waited forever.)
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    /// How long an idle worker spins before it sleeps ([`SPIN`]).
    spin: Duration,
    /// Tests only: how long a poster dawdles between seeing a sleeper and notifying, to
    /// widen the window a lost wake-up needs.
    dawdle: Duration,
    /// Whether the last probe found the workers far ([`Handoff::WhenNear`]).
    far: AtomicBool,
    /// Small fork–joins since the clock was last checked for a probe.
    small: AtomicU64,
    /// When the last probe ran, in nanoseconds since `born`.
    probed: AtomicU64,
    born: Instant,
}

// SAFETY: `post.task` is the only field without its own synchronization; see `Post` for
// the protocol that orders its writes and reads.
unsafe impl Sync for Pool {}

static POOL: OnceLock<&'static Pool> = OnceLock::new();

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let wanted = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_sub(1);
        Pool::start(wanted, SPIN, Duration::ZERO)
    })
}

impl Pool {
    /// A pool with up to `wanted` workers, which lives as long as the process.
    fn start(wanted: usize, spin: Duration, dawdle: Duration) -> &'static Pool {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers: AtomicUsize::new(0),
            submit: Mutex::new(()),
            post: Line(Post {
                epoch: AtomicUsize::new(0),
                task: UnsafeCell::new(None),
            }),
            done: (0..wanted).map(|_| Line(AtomicUsize::new(0))).collect(),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            spin,
            dawdle,
            far: AtomicBool::new(false),
            small: AtomicU64::new(0),
            probed: AtomicU64::new(0),
            born: Instant::now(),
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
    }

    fn work(&self, index: usize) {
        // Parts belong to calls of generated code; training steps flush denormals on the
        // caller too (`flush`).
        super::flush::flush_for_good();
        let mut seen = 0;
        loop {
            seen = self.wait_for_task(seen);
            // SAFETY: see `Post`: the epoch was read with acquire ordering after the task was
            // written, and the poster does not write it again before this worker's `done`.
            let task = unsafe { *self.post.0.task.get() };
            if let Some(Task(f)) = task {
                // SAFETY: see `Task`; the poster waits for this worker's `done`.
                let f = unsafe { &*f };
                // A panic must not leave the poster waiting: report the part done either way.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index)));
            }
            self.done[index - 1].0.store(seen, Ordering::Release);
        }
    }

    /// Spins, then sleeps, until the epoch differs from `seen`; returns the new epoch.
    fn wait_for_task(&self, seen: usize) -> usize {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let epoch = self.post.0.epoch.load(Ordering::Acquire);
            if epoch != seen {
                return epoch;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) || start.elapsed() < self.spin {
                std::hint::spin_loop();
                continue;
            }
            // Counted in before the epoch is read again, both sequentially consistent, and
            // the poster bumps the epoch before it reads the count: either this worker sees
            // the new epoch or the poster sees it counted and notifies, under `sleep`, which
            // this worker holds until it waits.
            let mut guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            while self.post.0.epoch.load(Ordering::SeqCst) == seen {
                guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
        }
    }

    /// [`run`] with the placement given.
    fn run_placed(
        &self,
        parts: usize,
        handoff: Handoff,
        placement: Placement,
        f: &(dyn Fn(usize) + Sync),
    ) {
        if handoff == Handoff::WhenNear && self.far(placement) {
            return (0..parts).for_each(f);
        }
        self.run(parts, &|i| {
            if i < parts {
                f(i)
            }
        });
    }

    /// Whether small fork–joins should stay on the caller: the last probe's answer, probed
    /// again when [`REPROBE`] has passed (the clock is read once per [`CHECK_EVERY`]).
    fn far(&self, placement: Placement) -> bool {
        match placement {
            Placement::Near => return false,
            Placement::Far => return true,
            Placement::Measured => {}
        }
        if self
            .small
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(CHECK_EVERY)
        {
            let now = self.born.elapsed().as_nanos() as u64;
            let last = self.probed.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= REPROBE.as_nanos() as u64 || last == 0 {
                // A probe that took far longer than any placement (a worker not yet started,
                // or descheduled) says nothing: the next check probes again.
                let took = self.probe();
                if took < UNSURE {
                    self.probed.store(now.max(1), Ordering::Relaxed);
                    self.far.store(took > FAR, Ordering::Relaxed);
                }
            }
        }
        self.far.load(Ordering::Relaxed)
    }

    /// The fastest of three empty fork–joins with every worker, after one that wakes them.
    fn probe(&self) -> Duration {
        let parts = self.workers.load(Ordering::Relaxed) + 1;
        self.run(parts, &|_| {});
        (0..3)
            .map(|_| {
                let start = Instant::now();
                self.run(parts, &|_| {});
                start.elapsed()
            })
            .min()
            .unwrap_or_default()
    }

    fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match self.submit.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return (0..parts).for_each(f),
        };
        // SAFETY (of the lifetime erasure): `f` is used by the workers only until each has
        // reported this epoch done, which this function waits for before returning.
        let task: *const (dyn Fn(usize) + Sync) = f;
        let task = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                task,
            )
        };
        // SAFETY: see `Post`: this thread holds `submit`, and every worker reported the
        // last epoch done before the last poster returned.
        unsafe { *self.post.0.task.get() = Some(Task(task)) };
        let epoch = self.post.0.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            if !self.dawdle.is_zero() {
                std::thread::sleep(self.dawdle);
            }
            let _sleep = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        // The workers use `f` until they are done, so part 0 must not unwind past this.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        for done in &self.done[..self.workers.load(Ordering::Relaxed)] {
            while done.0.load(Ordering::Acquire) != epoch {
                std::hint::spin_loop();
            }
        }
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

/// How [`run`] places small fork–joins ([`Handoff::WhenNear`]): a [`Placement`] as `u8`.
static PLACEMENT: AtomicU8 = AtomicU8::new(Placement::Measured as u8);

thread_local! {
    /// The placement that the compiled function this thread is calling chose for its
    /// small fork–joins ([`with_placement`]), if the process sets none.
    static CALL: Cell<Placement> = const { Cell::new(Placement::Measured) };
    /// Small fork–joins ([`Handoff::WhenNear`], more than one part) this thread has run.
    static SMALL: Cell<u64> = const { Cell::new(0) };
}

/// Sets how small fork–joins are placed from now on, process-wide. Results do not depend
/// on it, only where the parts run; for tests and measurements.
pub fn set_placement(placement: Placement) {
    PLACEMENT.store(placement as u8, Ordering::Relaxed);
}

/// Whether the process takes a placement as given ([`set_placement`]): then a compiled
/// function has none to choose.
pub(super) fn placement_is_set() -> bool {
    PLACEMENT.load(Ordering::Relaxed) != Placement::Measured as u8
}

/// Runs `f` with this thread's small fork–joins placed as `placement` says (unless the
/// process sets a placement), as before afterwards.
pub(super) fn with_placement<R>(placement: Placement, f: impl FnOnce() -> R) -> R {
    struct Restore(Placement);
    impl Drop for Restore {
        fn drop(&mut self) {
            CALL.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CALL.with(|c| c.replace(placement)));
    f()
}

/// How many small fork–joins this thread has run so far.
pub(super) fn small_joins() -> u64 {
    SMALL.with(Cell::get)
}

fn placement() -> Placement {
    match PLACEMENT.load(Ordering::Relaxed) {
        x if x == Placement::Near as u8 => Placement::Near,
        x if x == Placement::Far as u8 => Placement::Far,
        _ => CALL.with(Cell::get),
    }
}

/// Runs `f(0)` … `f(parts - 1)`, part 0 on the calling thread and the others on the
/// workers (or, as `handoff` says, all on the calling thread, in order), and returns
/// when all have finished. `parts` must come from [`parts`].
pub(super) fn run(parts: usize, handoff: Handoff, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 {
        return (0..parts).for_each(f);
    }
    if handoff == Handoff::WhenNear {
        SMALL.with(|n| n.set(n.get() + 1));
    }
    pool().run_placed(parts, handoff, placement(), f);
}

/// Taken by the tests that run fork–joins on the process-wide pool: a test that asserts
/// where its parts ran (`choose.rs`) must not find the pool taken by another test's
/// fork–join (then its parts run on the caller, and its count of handed-over calls fell
/// short once in a CI run).
#[cfg(test)]
pub(super) fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;

    /// Many fork–joins in a row, with workers that sleep as soon as they are idle and
    /// posters on two threads (one of which often finds the pool taken and runs serially):
    /// every part of every task runs exactly once, and no task waits forever. The pool's
    /// first wake-up protocol (a poster clearing a flag that a worker had set for a later
    /// sleep) hung a test run; this finds such a lost wake-up as a timeout, not a hang.
    /// Small fork–joins run every part once, on the workers when they are taken as near
    /// and all on the caller when far; large ones go to the workers either way.
    #[test]
    fn small_fork_joins_stay_on_the_caller_when_the_workers_are_far() {
        let pool = Pool::start(1, SPIN, Duration::ZERO);
        assert_eq!(pool.workers.load(Ordering::Relaxed), 1);
        let me = std::thread::current().id();
        let ran_here = |handoff, placement| {
            let here: Vec<Mutex<Option<bool>>> = (0..2).map(|_| Mutex::new(None)).collect();
            pool.run_placed(2, handoff, placement, &|i| {
                let mut slot = here[i].lock().unwrap();
                assert!(slot.is_none(), "part {i} ran twice");
                *slot = Some(std::thread::current().id() == me);
            });
            here.iter()
                .map(|h| h.lock().unwrap().expect("a part did not run"))
                .collect::<Vec<_>>()
        };
        assert_eq!(ran_here(Handoff::WhenNear, Placement::Far), [true, true]);
        assert_eq!(ran_here(Handoff::WhenNear, Placement::Near), [true, false]);
        assert_eq!(ran_here(Handoff::Always, Placement::Far), [true, false]);
        for _ in 0..10 {
            let measured = ran_here(Handoff::WhenNear, Placement::Measured);
            assert!(measured[0], "part 0 left the caller");
        }
    }

    #[test]
    fn every_part_runs_once_and_no_wake_up_is_lost() {
        // Workers that sleep as soon as they are idle, and posters that dawdle before they
        // notify one: with the first protocol, this hung within a few hundred rounds.
        let pool = Pool::start(3, Duration::ZERO, Duration::from_micros(200));
        let workers = pool.workers.load(Ordering::Relaxed);
        let (done, finished) = mpsc::channel();
        for poster in 0..2u64 {
            let done = done.clone();
            std::thread::spawn(move || {
                for round in 0..2_000u64 {
                    let parts = (round % (workers as u64 + 1)) as usize + 1;
                    let hits: Vec<AtomicU64> = (0..parts).map(|_| AtomicU64::new(0)).collect();
                    if parts == 1 {
                        hits[0].fetch_add(1, Ordering::Relaxed);
                    } else {
                        pool.run(parts, &|i| {
                            if i < parts {
                                hits[i].fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    if round % 97 == poster {
                        std::thread::yield_now();
                    }
                }
                let _ = done.send(poster);
            });
        }
        for _ in 0..2 {
            let poster = finished
                .recv_timeout(Duration::from_secs(60))
                .expect("a poster waited more than 60 s for its parts: a lost wake-up");
            assert!(poster < 2);
        }
    }
}
