//! Where a compiled function's time goes, instruction by instruction: with
//! [`super::Options::profile`], the generated code calls the host before each
//! instruction of the function's IR (and once at its end), and the host adds the time
//! since the last call to the instruction that was running. `lstmc bench --profile`
//! prints the result.
//!
//! The calls cost some 20–40 ns each and keep values in registers from living across
//! them, so a profiled function runs slower than the plain one; the shares are what to
//! read. Time counted includes host calls (products, updates, waits for other threads)
//! made by the instruction. One call of the function at a time is attributed correctly
//! (the benchmark's case).

use crate::ir::{Function, Op};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The id of a function's start: nothing runs before it.
pub(crate) const START: u64 = u64::MAX - 1;
/// The id of a function's end: the last instruction stops there.
pub(crate) const END: u64 = u64::MAX;

/// Nanoseconds and passes per instruction of one compiled function.
#[derive(Debug)]
pub struct Profile {
    epoch: Instant,
    /// When the running instruction started (ns since `epoch`).
    since: AtomicU64,
    /// The running instruction's index, or [`START`]/[`END`].
    running: AtomicU64,
    ns: Vec<AtomicU64>,
    passes: Vec<AtomicU64>,
    /// Calls of the function (its ends).
    calls: AtomicU64,
}

/// One line of [`Profile::report`].
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// The instruction, as `lstmc ir` prints it (its first line).
    pub inst: String,
    /// Its operation's name, without its attributes (`update`, `fused`, `matmul`).
    pub kind: String,
    /// Nanoseconds per call of the function.
    pub ns_per_call: f64,
    /// Passes per call (more than one inside a loop).
    pub passes_per_call: f64,
}

impl Profile {
    /// A profile for a function of `insts` instructions.
    pub fn new(insts: usize) -> Profile {
        Profile {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
            running: AtomicU64::new(START),
            ns: (0..insts).map(|_| AtomicU64::new(0)).collect(),
            passes: (0..insts).map(|_| AtomicU64::new(0)).collect(),
            calls: AtomicU64::new(0),
        }
    }

    /// Instruction `id` starts (or the function starts or ends, `START`, `END`): the
    /// time since the last tick goes to the instruction that was running.
    pub fn tick(&self, id: u64) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let last = self.running.swap(id, Ordering::Relaxed);
        let since = self.since.swap(now, Ordering::Relaxed);
        if let Some(ns) = self.ns.get(last as usize) {
            ns.fetch_add(now.saturating_sub(since), Ordering::Relaxed);
        }
        if let Some(p) = self.passes.get(id as usize) {
            p.fetch_add(1, Ordering::Relaxed);
        }
        if id == END {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Zeroes the counts (after warm-up calls, say).
    pub fn clear(&self) {
        for c in self.ns.iter().chain(&self.passes).chain([&self.calls]) {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// The instructions of `f` (the function this profile counts) that took any time, the
    /// slowest first.
    pub fn report(&self, f: &Function) -> Vec<Line> {
        let calls = self.calls.load(Ordering::Relaxed).max(1) as f64;
        let mut lines: Vec<Line> = (0..self.ns.len().min(f.insts.len()))
            .filter(|&i| self.ns[i].load(Ordering::Relaxed) > 0)
            .map(|i| {
                let d = &f.insts[i];
                let res: Vec<String> = d.results.iter().map(|r| r.to_string()).collect();
                let ty = d.results.first().map(|r| f.ty(*r).to_string());
                let op = match &d.op {
                    Op::Fused(k) => {
                        format!("fused ({} in, {} out)", k.broadcast.len(), k.outputs.len())
                    }
                    op => op.mnemonic(),
                };
                let kind = op.split([' ', '[']).next().unwrap_or_default().to_string();
                let args: Vec<String> = d.args.iter().map(|a| a.to_string()).collect();
                Line {
                    inst: format!(
                        "{} = {op} {} : {}",
                        res.join(", "),
                        args.join(", "),
                        ty.unwrap_or_default()
                    ),
                    kind,
                    ns_per_call: self.ns[i].load(Ordering::Relaxed) as f64 / calls,
                    passes_per_call: self.passes[i].load(Ordering::Relaxed) as f64 / calls,
                }
            })
            .collect();
        lines.sort_by(|a, b| b.ns_per_call.total_cmp(&a.ns_per_call));
        lines
    }
}
