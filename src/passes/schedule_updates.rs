//! Update scheduling: each optimizer update of a training step moves up to just after
//! the last instruction it must follow (the one that completes its gradient, and every
//! reader of the weight or its slots), instead of all updates waiting at the end.
//!
//! The gradient is then still in cache when the update reads it, and a gradient
//! product over few rows (`matmul_at` of the tutorial's four steps) sits right before
//! its update, where code generation computes it inside the update, row by row, instead
//! of storing it (`codegen::deferred_outer`). A forward function has no updates: the
//! pass leaves it as it is.

use super::Options;
use crate::ir::{Function, IrError, Op};

/// Runs the pass on the entry block (updates live there only).
pub fn run(f: &mut Function, _: &Options) -> Result<(), IrError> {
    let entry = f.entry;
    let mut insts = f.block(entry).insts.clone();
    let updates: Vec<_> = insts
        .iter()
        .copied()
        .filter(|&i| matches!(f.inst(i).op, Op::Update(_)))
        .collect();
    for u in updates {
        let at = insts
            .iter()
            .position(|&i| i == u)
            .ok_or_else(|| IrError("an update left its block".into()))?;
        let args = f.inst(u).args.clone();
        // Written in place: the weight and its two slots.
        let written = [args[0], args[2], args[3]];
        let mut earliest = 0;
        for (p, &i) in insts[..at].iter().enumerate() {
            let d = f.inst(i);
            let mut reads = d.args.clone();
            if let Op::Loop { body, .. } = d.op {
                reads.extend(f.free_uses(body));
            }
            let defines = d.results.iter().any(|r| args.contains(r));
            if defines || reads.iter().any(|r| written.contains(r)) {
                earliest = p + 1;
            }
        }
        insts.remove(at);
        insts.insert(earliest, u);
    }
    f.blocks[entry.index()].insts = insts;
    Ok(())
}
