//! The optimizing passes, in one explicit ordered list.
//!
//! Each pass rewrites the forward [`Function`] in place and is followed by the
//! verifier (always: it is cheap next to code generation, and a pass that
//! breaks an invariant must fail loudly, not miscompile). `lstmc ir --after
//! PASS` prints the IR after any of them, and every pass keeps the function's
//! meaning: the interpreter gives the same numbers before and after (a
//! property test holds the whole pipeline to that).

pub mod concat;
pub mod cse;
pub mod dce;
pub mod fold;
pub mod fuse_elementwise;
pub mod fuse_gates;
pub mod hoist;
pub mod pack;
pub mod reverse;
pub mod schedule_updates;
pub mod transpose;
pub mod unroll;

use crate::ir::{verify::verify, Function, IrError};

/// A pass: a name and the rewrite.
pub struct Pass {
    /// The name `--after` takes.
    pub name: &'static str,
    /// What it does, for `--help` and the docs.
    pub about: &'static str,
    /// The rewrite.
    pub run: fn(&mut Function, &Options) -> Result<(), IrError>,
}

/// Knobs of the pipeline.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Loops of at most this many steps are fully unrolled.
    pub full_unroll_max: usize,
    /// Longer loops are unrolled by the largest divisor of their length up to this.
    pub partial_unroll_max: usize,
    /// Products of at least this many multiply-adds (and more than 4 rows) read their
    /// weight packed, in loops and, with long sums, outside them (`pack`); `usize::MAX`
    /// turns packing off.
    pub pack_min: usize,
}

impl Default for Options {
    fn default() -> Options {
        // Measured with `lstmc bench --full-unroll-max N --partial-unroll-max F` (2026-12-04):
        // W1 (4 steps) 0.240 µs rolled, 0.216 µs fully unrolled; W3 (50 steps) 12.69 ms
        // rolled, 12.65 ms unrolled by 2, 12.19 ms fully unrolled (within noise) but compiled
        // in 42.5 ms instead of 2.8 ms. Full unrolling pays where loop overhead is comparable
        // to a step's work; compile time grows linearly with it.
        Options {
            full_unroll_max: 16,
            partial_unroll_max: 4,
            // Where code generation calls the host GEMM (`Tuning::gemm_crossover`).
            pack_min: 1 << 18,
        }
    }
}

/// The passes, in the order they run.
pub const PASSES: &[Pass] = &[
    Pass {
        name: "fuse-gates",
        about: "one matmul per operand for all gates, against the concatenated weights",
        run: fuse_gates::run,
    },
    Pass {
        name: "hoist",
        about: "loop-invariant code out of time loops; x_t·W for all steps as one matmul before the loop",
        run: hoist::run,
    },
    Pass {
        name: "unroll",
        about: "short loops fully unrolled, long ones by a factor",
        run: unroll::run,
    },
    Pass {
        name: "fold",
        about: "constant folding of zero states (the first step of a non-stateful layer)",
        run: fold::run,
    },
    Pass {
        name: "dce",
        about: "dead-code elimination",
        run: dce::run,
    },
    Pass {
        name: "cse",
        about: "common subexpressions merged (autodiff's repeated adjoints), then dead code again",
        run: cse::run,
    },
    Pass {
        name: "concat",
        about: "sums of zero-padded pieces (a split value's adjoint) into one concatenation",
        run: concat::run,
    },
    Pass {
        name: "reverse",
        about: "time reversals of stacked adjoints moved to the smaller operand of a product over all steps, or dropped under sums",
        run: reverse::run,
    },
    Pass {
        name: "pack",
        about: "a weight that a loop multiplies by at every step (h·U, d·Uᵀ) packed once before it, in panels of 24 columns",
        run: pack::run,
    },
    Pass {
        name: "transpose",
        about: "a weight that a loop reads transposed at every step (d·Uᵀ) transposed once before it",
        run: transpose::run,
    },
    Pass {
        name: "fuse-elementwise",
        about: "chains of elementwise ops (gates, cell update, output) into one kernel each",
        run: fuse_elementwise::run,
    },
    Pass {
        name: "schedule-updates",
        about: "a training step's optimizer updates right after their gradients, not all at the end",
        run: schedule_updates::run,
    },
];

/// The names of the passes, in order.
pub fn names() -> Vec<&'static str> {
    PASSES.iter().map(|p| p.name).collect()
}

/// Runs the passes in order, verifying after each; stops after `until` if given.
pub fn optimize(f: &mut Function, options: &Options, until: Option<&str>) -> Result<(), IrError> {
    if let Some(u) = until {
        if !PASSES.iter().any(|p| p.name == u) {
            return Err(IrError(format!(
                "no pass `{u}`; the passes are: {}",
                names().join(", ")
            )));
        }
    }
    for pass in PASSES {
        (pass.run)(f, options).map_err(|e| IrError(format!("pass {}: {e}", pass.name)))?;
        verify(f).map_err(|e| IrError(format!("after pass {}: {e}", pass.name)))?;
        if until == Some(pass.name) {
            break;
        }
    }
    Ok(())
}
