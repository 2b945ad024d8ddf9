//! Common-subexpression elimination: in each block, an instruction with the same
//! op and the same operands as an earlier one is dropped and its results replaced
//! by the earlier one's. A loop's stacked results that stack the same value at
//! every step become one. Then dead code goes ([`super::dce`]).
//!
//! Autodiff needs this: the adjoint of a step's gate pre-activations is built once
//! for the recurrent product `dz · Uᵀ` and once more for the weight gradient
//! deferred to after the loop; unmerged, every step computed it twice and the tape
//! stacked it twice.
//!
//! Ops that allocate (`zeros`), write in place (`update`) or structure control
//! (`loop`, `yield`) are never merged.

use super::Options;
use crate::ir::{Function, Inst, IrError, Op};

fn mergeable(op: &Op) -> bool {
    !matches!(
        op,
        Op::Zeros(_) | Op::Loop { .. } | Op::Yield | Op::Update(_)
    )
}

/// Runs the pass to a fixed point, then dead-code elimination.
pub fn run(f: &mut Function, options: &Options) -> Result<(), IrError> {
    while merge_instructions(f) | merge_stacked(f) {}
    super::dce::run(f, options)
}

/// Merges repeated instructions within each block; whether any went.
fn merge_instructions(f: &mut Function) -> bool {
    let mut changed = false;
    for b in f.reachable_blocks() {
        let mut kept: Vec<Inst> = Vec::new();
        let mut replaced = Vec::new();
        for i in f.block(b).insts.clone() {
            let d = f.inst(i);
            let earlier = mergeable(&d.op)
                .then(|| {
                    kept.iter().copied().find(|&j| {
                        let e = f.inst(j);
                        e.op == d.op && e.args == d.args && e.results.len() == d.results.len()
                    })
                })
                .flatten();
            match earlier {
                Some(j) => replaced.push((i, j)),
                None => kept.push(i),
            }
        }
        if replaced.is_empty() {
            continue;
        }
        changed = true;
        f.blocks[b.index()].insts = kept;
        for (i, j) in replaced {
            let pairs: Vec<_> = f
                .inst(i)
                .results
                .iter()
                .copied()
                .zip(f.inst(j).results.iter().copied())
                .collect();
            for (old, new) in pairs {
                f.replace_uses(old, new);
            }
        }
    }
    changed
}

/// Replaces the uses of a loop's stacked result that stacks, at every step, the same
/// values as an earlier one; whether any use changed.
fn merge_stacked(f: &mut Function) -> bool {
    let uses = f.use_counts();
    let mut changed = false;
    for b in f.reachable_blocks() {
        for i in f.block(b).insts.clone() {
            let Op::Loop { body, per_iter, .. } = f.inst(i).op else {
                continue;
            };
            let Some(&y) = f.block(body).insts.last() else {
                continue;
            };
            let carried = f.inst(i).args.len();
            let results = f.inst(i).results.clone();
            let n = results.len() - carried;
            let yargs = f.inst(y).args.clone();
            let column = |s: usize| -> Vec<_> {
                (0..per_iter).map(|j| yargs[carried + j * n + s]).collect()
            };
            for s2 in 0..n {
                let dup = results[carried + s2];
                if uses[dup.index()] == 0 {
                    continue;
                }
                if let Some(s1) = (0..s2).find(|&s1| column(s1) == column(s2)) {
                    f.replace_uses(dup, results[carried + s1]);
                    changed = true;
                }
            }
        }
    }
    changed
}
