//! Dead-code elimination: instructions none of whose results is used go,
//! repeatedly, in every block (a loop goes when none of its results is used).
//! A loop's per-step results (stacked over time) that nothing reads go too,
//! with what their body computed only for them. This is what keeps a training
//! step's tape down to the values its backward pass reads: autodiff stacks
//! every body value, and the unread stacks are dropped here.

use super::Options;
use crate::ir::{Function, IrError, Op, ValueDef};

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
        changed |= prune_stacked(f, &uses);
        if !changed {
            return Ok(());
        }
    }
}

/// Drops every loop's unread stacked results and their yield operands; whether any went.
fn prune_stacked(f: &mut Function, uses: &[usize]) -> bool {
    let mut changed = false;
    for b in f.reachable_blocks() {
        for i in f.block(b).insts.clone() {
            let Op::Loop { body, per_iter, .. } = f.inst(i).op else {
                continue;
            };
            let carried = f.inst(i).args.len();
            let results = f.inst(i).results.clone();
            let n_stacked = results.len() - carried;
            let dead: Vec<usize> = (0..n_stacked)
                .filter(|&s| uses[results[carried + s].index()] == 0)
                .collect();
            if dead.is_empty() {
                continue;
            }
            changed = true;
            let Some(&y) = f.block(body).insts.last() else {
                continue;
            };
            let yargs = f.inst(y).args.clone();
            let mut kept_args = yargs[..carried].to_vec();
            for j in 0..per_iter {
                for s in (0..n_stacked).filter(|s| !dead.contains(s)) {
                    kept_args.push(yargs[carried + j * n_stacked + s]);
                }
            }
            f.insts[y.index()].args = kept_args;
            let kept: Vec<_> = results[..carried]
                .iter()
                .copied()
                .chain(
                    (0..n_stacked)
                        .filter(|s| !dead.contains(s))
                        .map(|s| results[carried + s]),
                )
                .collect();
            for (k, &r) in kept.iter().enumerate() {
                f.values[r.index()].def = ValueDef::Result(i, k);
            }
            f.insts[i.index()].results = kept;
        }
    }
    changed
}
