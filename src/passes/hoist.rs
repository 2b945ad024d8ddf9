//! Hoisting: loop-invariant instructions move before their loop, and the
//! input projection `time_step(x, k) · W` becomes `time_step(x · W, k)` with
//! `x · W` one matmul over all steps `(B·T, F) × (F, N)` before the loop, so
//! that only `h · U` stays inside.

use super::Options;
use crate::ir::{Block, Function, Inst, IrError, Op, Value};
use std::collections::HashSet;

/// Runs the pass on every loop.
pub fn run(f: &mut Function, _: &Options) -> Result<(), IrError> {
    for b in f.reachable_blocks() {
        let mut pos = 0;
        while pos < f.block(b).insts.len() {
            let i = f.block(b).insts[pos];
            if let Op::Loop { body, .. } = f.inst(i).op {
                let hoisted = hoist_loop(f, body)?;
                let n = hoisted.len();
                let list = &mut f.blocks[b.index()].insts;
                for (k, h) in hoisted.into_iter().enumerate() {
                    list.insert(pos + k, h);
                }
                pos += n;
            }
            pos += 1;
        }
    }
    Ok(())
}

/// Returns the instructions to place before the loop, in order, and removes them from the body.
fn hoist_loop(f: &mut Function, body: Block) -> Result<Vec<Inst>, IrError> {
    let mut inside: HashSet<Value> = f.block(body).params.iter().copied().collect();
    for &i in &f.block(body).insts {
        inside.extend(f.inst(i).results.iter().copied());
    }
    let mut hoisted = Vec::new();
    let mut kept = Vec::new();
    for i in f.block(body).insts.clone() {
        let d = f.inst(i).clone();
        let invariant = !matches!(d.op, Op::Yield | Op::Loop { .. })
            && d.args.iter().all(|a| !inside.contains(a));
        if invariant {
            for r in &d.results {
                inside.remove(r);
            }
            hoisted.push(i);
            continue;
        }
        // matmul(time_step(x, k), W) with x and W invariant: project every step at once.
        if d.op == Op::MatMul && !inside.contains(&d.args[1]) {
            if let Some(ts) = f.def_inst(d.args[0]) {
                let t = f.inst(ts).clone();
                if let Op::TimeStep { .. } = t.op {
                    if t.args.len() == 2 && !inside.contains(&t.args[0]) {
                        let proj = f.make(Op::MatMul, vec![t.args[0], d.args[1]], d.origin)?;
                        hoisted.push(proj);
                        let step =
                            f.make(t.op.clone(), vec![f.result(proj), t.args[1]], d.origin)?;
                        let (old, new) = (d.results[0], f.result(step));
                        inside.insert(new);
                        f.replace_uses(old, new);
                        kept.push(step);
                        continue;
                    }
                }
            }
        }
        kept.push(i);
    }
    f.blocks[body.index()].insts = kept;
    Ok(hoisted)
}
