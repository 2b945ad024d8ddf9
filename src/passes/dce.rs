//! Dead-code elimination: instructions none of whose results is used go,
//! repeatedly, in every block (a loop goes when none of its results is used).

use super::Options;
use crate::ir::{Function, IrError, Op};

/// Runs the pass to a fixed point.
pub fn run(f: &mut Function, _: &Options) -> Result<(), IrError> {
    loop {
        let uses = f.use_counts();
        let mut changed = false;
        for b in f.reachable_blocks() {
            let before = f.block(b).insts.len();
            let keep: Vec<_> = f
                .block(b)
                .insts
                .iter()
                .copied()
                .filter(|&i| {
                    let d = f.inst(i);
                    d.op == Op::Yield || d.results.iter().any(|r| uses[r.index()] > 0)
                })
                .collect();
            changed |= keep.len() != before;
            f.blocks[b.index()].insts = keep;
        }
        if !changed {
            return Ok(());
        }
    }
}
