//! Where a compiled function's small fork–joins run ([`super::pool::Handoff::WhenNear`]),
//! chosen by timing the function itself.
//!
//! The pool's probe tells near cores from far ones by the time of an empty fork–join,
//! against a line drawn on one host (0.4 µs). Another host (2026-12-05, whose two virtual
//! CPUs hand a cache line over in 160–176 ns, between the first host's near 27–70 ns and
//! far 330–385 ns) fell on the far side of that line, and there the right answer depended
//! on the function: the tutorial's training step was 20% faster with its few-row products
//! and its recurrent kernel's update split between the cores (an epoch 2.04 ms against
//! 2.6 ms on the caller alone), its forward 18% slower (11.3 µs against 9.5 µs). No line
//! drawn on the probe fits both. So a function that makes small fork–joins times its
//! calls, in blocks with their parts handed to the workers and kept on the caller in turn
//! ([`Trial`]), takes the faster way, and tries again after a while ([`RETRY`]), as the
//! host moves its CPUs. The choice changes where the parts run, never what they compute:
//! the same bits either way.

use super::pool::{self, Placement};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// Calls before a trial is timed: the first ones fault the arena's pages in and wake the
/// workers.
const WARM: u32 = 2;

/// Calls counted each way in a trial (in blocks of [`BLOCK`], [`Trial`]).
const TRIAL: usize = 12;

/// Least time from a trial's end to the next trial.
const RETRY: Duration = Duration::from_millis(250);

/// ... and at least this many times the trial's own calls' time, so that trials of long
/// calls, half of them the slower way, take a small share of the time.
const RETRY_PER_TRIAL: u32 = 32;

/// [`Chooser::state`]: a trial is on (or has not started).
const TRYING: u8 = 0;
/// The function makes no small fork–joins: nothing to choose.
const NONE: u8 = 1;
/// Chosen: to the workers.
const NEAR: u8 = 2;
/// Chosen: on the caller.
const FAR: u8 = 3;

/// One compiled function's choice ([`Chooser::call`]).
pub(super) struct Chooser {
    /// [`TRYING`], [`NONE`], [`NEAR`] or [`FAR`].
    state: AtomicU8,
    /// While a choice holds: when the next trial starts, in nanoseconds of [`clock`].
    retry_at: AtomicU64,
    trial: Mutex<Trial>,
}

impl Default for Chooser {
    fn default() -> Chooser {
        Chooser {
            state: AtomicU8::new(TRYING),
            retry_at: AtomicU64::new(0),
            trial: Mutex::new(Trial::default()),
        }
    }
}

impl Chooser {
    /// Runs `f` (one call of the function) with its small fork–joins placed as chosen, or,
    /// during a trial, as the trial tries next, timing it. A call that finds the trial
    /// taken by a call on another thread, or a placement set for the process, runs as the
    /// pool's probe says or as set.
    pub(super) fn call<R>(&self, f: impl FnOnce() -> R) -> R {
        if pool::placement_is_set() {
            return f();
        }
        match self.state.load(Ordering::Relaxed) {
            NONE => return f(),
            chosen @ (NEAR | FAR) => {
                let placement = if chosen == NEAR {
                    Placement::Near
                } else {
                    Placement::Far
                };
                if clock() < self.retry_at.load(Ordering::Relaxed) {
                    return pool::with_placement(placement, f);
                }
                // Time to try again; one caller moves the state, the others run as chosen.
                if self
                    .state
                    .compare_exchange(chosen, TRYING, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    return pool::with_placement(placement, f);
                }
            }
            _ => {}
        }
        let mut trial = match self.trial.try_lock() {
            Ok(t) => t,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return f(),
        };
        let placement = trial.next();
        let joins = pool::small_joins();
        let start = Instant::now();
        let out = pool::with_placement(placement, f);
        let took = start.elapsed();
        if pool::small_joins() == joins {
            // Straight-line code makes the same fork–joins at every call.
            self.state.store(NONE, Ordering::Relaxed);
            return out;
        }
        if let Some((chosen, spent)) = trial.record(placement, took) {
            let wait = RETRY.max(spent.saturating_mul(RETRY_PER_TRIAL));
            self.retry_at
                .store(clock() + wait.as_nanos() as u64, Ordering::Relaxed);
            let state = if chosen == Placement::Near { NEAR } else { FAR };
            self.state.store(state, Ordering::Relaxed);
        }
        out
    }
}

/// Nanoseconds since the first use.
fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The calls of one trial, in nanoseconds, each way: in blocks of [`BLOCK`] calls the
/// same way, near and far in turn, the first [`SETTLE`] of each block not counted.
///
/// The first trials alternated call by call, and each call then paid for the last one's
/// placement: the tutorial's training step, with its recurrent kernel's rows split
/// between the cores, found half of them in the other core's cache after a call that ran
/// all on the caller, and the other way round. Both ways' medians measured those moves,
/// and the chooser took the caller at times: an epoch at two threads took 2.08–2.48 ms
/// against 2.02–2.15 ms with the parts always handed over (alternating runs,
/// 2026-12-06). In blocks, the same step took 38–42 µs near and 48–54 µs far; the first
/// far call after a near block 56–78 µs, the first near call after a far one 44–51 µs.
#[derive(Default)]
struct Trial {
    /// Warm-up calls so far (of [`WARM`]; counted once per function).
    warm: u32,
    /// Calls so far in the current block.
    at: u32,
    /// Whether the current block runs far (on the caller).
    far_block: bool,
    near: Vec<u64>,
    far: Vec<u64>,
    /// The trial's timed calls' time so far (not the warm-up's).
    spent: Duration,
}

/// Calls in a row the same way in a trial.
const BLOCK: u32 = 8;

/// Calls at the start of a block not counted: they move the data the other way's calls
/// left in the other cores' caches.
const SETTLE: u32 = 2;

impl Trial {
    /// How the next call runs: as the probe says while warming up, then each way in turn,
    /// a block at a time.
    fn next(&self) -> Placement {
        if self.warm < WARM {
            Placement::Measured
        } else if self.far_block {
            Placement::Far
        } else {
            Placement::Near
        }
    }

    /// Counts a call that ran as `placement` and took `took`. Once each way has [`TRIAL`]
    /// counted calls: the way with the smaller median (the caller's on a tie) and the
    /// trial's time, and a new trial begins.
    fn record(&mut self, placement: Placement, took: Duration) -> Option<(Placement, Duration)> {
        let ns = took.as_nanos() as u64;
        let way = match placement {
            Placement::Measured => {
                self.warm += 1;
                return None;
            }
            Placement::Near => &mut self.near,
            Placement::Far => &mut self.far,
        };
        if self.at >= SETTLE {
            way.push(ns);
        }
        self.spent += took;
        self.at += 1;
        if self.at == BLOCK {
            self.at = 0;
            self.far_block = !self.far_block;
        }
        if self.near.len() < TRIAL || self.far.len() < TRIAL {
            return None;
        }
        let chosen = if median(&mut self.near) < median(&mut self.far) {
            Placement::Near
        } else {
            Placement::Far
        };
        let spent = std::mem::take(&mut self.spent);
        *self = Trial {
            warm: self.warm,
            ..Trial::default()
        };
        Some((chosen, spent))
    }
}

fn median(xs: &mut [u64]) -> u64 {
    xs.sort_unstable();
    xs[xs.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::native::pool::Handoff;

    /// Calls in a whole trial: blocks each way in turn until each has [`TRIAL`] counted.
    const TRIAL_CALLS: usize = 2 * BLOCK as usize * TRIAL.div_ceil((BLOCK - SETTLE) as usize);

    /// A trial warms up, then runs blocks of calls each way in turn, counts each block's
    /// calls after the first [`SETTLE`], and picks the way whose median is smaller, though
    /// the other way has the single fastest call and the smaller mean. Its time includes
    /// the settling calls.
    #[test]
    fn a_trial_takes_the_way_with_the_smaller_median() {
        let mut t = Trial::default();
        let us = Duration::from_micros;
        for _ in 0..WARM {
            assert_eq!(t.next(), Placement::Measured);
            assert!(t.record(Placement::Measured, us(1000)).is_none());
        }
        let mut seen = Vec::new();
        let mut chosen = None;
        for i in 0..TRIAL_CALLS {
            let p = t.next();
            seen.push(p);
            let (block, at) = (i / BLOCK as usize, i as u32 % BLOCK);
            // Settling: near 900 µs, far 1 µs. Counted: near mostly 30 µs with one 1 µs
            // call, far mostly 25 µs with one 900 µs.
            let took = match (p, at < SETTLE, block, at) {
                (Placement::Near, true, ..) => us(900),
                (Placement::Far, true, ..) => us(1),
                (Placement::Near, false, 0, SETTLE) => us(1),
                (Placement::Near, false, ..) => us(30),
                (Placement::Far, false, 1, SETTLE) => us(900),
                _ => us(25),
            };
            chosen = t.record(p, took);
            assert_eq!(chosen.is_some(), i == TRIAL_CALLS - 1, "call {i}");
        }
        let expected: Vec<Placement> = (0..TRIAL_CALLS)
            .map(|i| [Placement::Near, Placement::Far][i / BLOCK as usize % 2])
            .collect();
        assert_eq!(seen, expected);
        let (placement, spent) = chosen.unwrap();
        assert_eq!(placement, Placement::Far);
        let settling = TRIAL_CALLS / BLOCK as usize / 2 * SETTLE as usize;
        assert_eq!(
            spent,
            us(settling as u64 * (900 + 1) + 1 + (TRIAL as u64 - 1) * (30 + 25) + 900)
        );
        // The next trial starts afresh with a near block, without warming up again.
        for i in 0..TRIAL_CALLS {
            let p = t.next();
            assert_eq!(p == Placement::Far, i / BLOCK as usize % 2 == 1, "call {i}");
            let r = t.record(p, us(if p == Placement::Near { 40 } else { 50 }));
            assert_eq!(
                r.map(|r| r.0),
                (i == TRIAL_CALLS - 1).then_some(Placement::Near)
            );
        }
    }

    /// Whether a fork–join of two parts ran its second part on another thread.
    fn handed_over() -> bool {
        let me = std::thread::current().id();
        let away = std::sync::atomic::AtomicBool::new(false);
        pool::run(pool::parts(2), Handoff::WhenNear, &|i| {
            if i == 1 && std::thread::current().id() != me {
                away.store(true, Ordering::Relaxed);
            }
        });
        away.load(Ordering::Relaxed)
    }

    /// A function whose calls take longer when its parts go to the workers ends up keeping
    /// them on the caller: the chooser follows the calls' time, whatever the probe says.
    /// (Not the converse by timing: on a loaded machine a descheduled worker makes handed
    /// calls slow whatever the test adds, and the chooser rightly keeps them on the
    /// caller; the trial's choice itself is `a_trial_takes_the_way_with_the_smaller_median`.)
    /// A choice of the workers hands the parts over until its time is up; a function
    /// without small fork–joins is left alone after its first call.
    #[test]
    fn a_function_runs_its_small_fork_joins_the_faster_way() {
        let _pool = pool::exclusive();
        let spin = |d: Duration| {
            let start = Instant::now();
            while start.elapsed() < d {
                std::hint::spin_loop();
            }
        };
        let slow_when_handed = || {
            let away = handed_over();
            spin(Duration::from_micros(if away { 300 } else { 50 }));
            away
        };
        let chooser = Chooser::default();
        let runs: Vec<bool> = (0..WARM as usize + TRIAL_CALLS + 20)
            .map(|_| chooser.call(slow_when_handed))
            .collect();
        if pool::parts(2) == 1 {
            // One core: nothing is ever handed over, nor chosen.
            assert!(runs.iter().all(|&away| !away));
            assert_eq!(chooser.state.load(Ordering::Relaxed), NONE);
            return;
        }
        assert_eq!(chooser.state.load(Ordering::Relaxed), FAR);
        let trial = &runs[WARM as usize..WARM as usize + TRIAL_CALLS];
        let blocks: Vec<bool> = trial.chunks(BLOCK as usize).map(|b| b[0]).collect();
        let turns: Vec<bool> = (0..blocks.len()).map(|b| b % 2 == 0).collect();
        assert_eq!(blocks, turns, "{trial:?}");
        assert!(
            trial
                .chunks(BLOCK as usize)
                .all(|b| b.iter().all(|&a| a == b[0])),
            "{trial:?}"
        );
        let after = &runs[WARM as usize + TRIAL_CALLS..];
        assert!(
            after.iter().all(|&away| !away),
            "after the trial: {after:?}"
        );
        // Chosen near, for the next second: every call hands its part over.
        chooser.state.store(NEAR, Ordering::Relaxed);
        chooser
            .retry_at
            .store(clock() + 1_000_000_000, Ordering::Relaxed);
        assert!((0..10).all(|_| chooser.call(handed_over)));
        let chooser = Chooser::default();
        chooser.call(|| spin(Duration::from_micros(10)));
        assert_eq!(chooser.state.load(Ordering::Relaxed), NONE);
    }
}
