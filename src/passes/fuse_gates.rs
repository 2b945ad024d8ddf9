//! Gate fusion: matmuls of one operand against adjacent column slices of one
//! weight become one matmul against the covering columns, whose result is
//! sliced per gate. An LSTM step's eight matmuls (four gates, two operands)
//! become two; with hoisting, one per step.

use super::Options;
use crate::ir::{Function, Inst, IrError, Op, Value};

/// A matmul against a column slice: the instruction, the slice's first column and width.
type Member = (Inst, usize, usize);

/// Runs the pass on every block.
pub fn run(f: &mut Function, _: &Options) -> Result<(), IrError> {
    for b in f.reachable_blocks() {
        let insts = f.block(b).insts.clone();
        // (lhs, weight) -> [(matmul, start, len)], in order of first appearance.
        let mut groups: Vec<((Value, Value), Vec<Member>)> = Vec::new();
        for &i in &insts {
            let d = f.inst(i);
            if d.op != Op::MatMul {
                continue;
            }
            let (lhs, rhs) = (d.args[0], d.args[1]);
            let Some(Op::SliceLast { start, len }) = f.def_op(rhs).cloned() else {
                continue;
            };
            let w = f
                .inst(f.def_inst(rhs).expect("a slice is an instruction"))
                .args[0];
            match groups.iter_mut().find(|(k, _)| *k == (lhs, w)) {
                Some((_, g)) => g.push((i, start, len)),
                None => groups.push(((lhs, w), vec![(i, start, len)])),
            }
        }
        // Replacement code, keyed by the first matmul of each contiguous run.
        let mut replace: Vec<(Inst, Vec<Inst>)> = Vec::new();
        let mut removed: Vec<Inst> = Vec::new();
        for ((lhs, w), mut g) in groups {
            g.sort_by_key(|&(_, s, _)| s);
            let mut runs: Vec<Vec<Member>> = Vec::new();
            for m in g {
                match runs.last_mut() {
                    Some(r) if r.last().map(|&(_, s, l)| s + l) == Some(m.1) => r.push(m),
                    _ => runs.push(vec![m]),
                }
            }
            for run in runs.into_iter().filter(|r| r.len() > 1) {
                let s0 = run[0].1;
                let total: usize = run.iter().map(|&(_, _, l)| l).sum();
                let origin = f.inst(run[0].0).origin;
                let mut code = Vec::new();
                let cols = *f.shape(w).last().unwrap_or(&0);
                let rhs = if s0 == 0 && total == cols {
                    w
                } else {
                    let s = f.make(
                        Op::SliceLast {
                            start: s0,
                            len: total,
                        },
                        vec![w],
                        origin,
                    )?;
                    code.push(s);
                    f.result(s)
                };
                let m = f.make(Op::MatMul, vec![lhs, rhs], origin)?;
                code.push(m);
                let fused = f.result(m);
                for &(old, s, l) in &run {
                    let slice = f.make(
                        Op::SliceLast {
                            start: s - s0,
                            len: l,
                        },
                        vec![fused],
                        origin,
                    )?;
                    code.push(slice);
                    let (from, to) = (f.result(old), f.result(slice));
                    f.replace_uses(from, to);
                    removed.push(old);
                }
                // Emitted where the earliest of the run stood: its operands are defined there.
                let first = *run
                    .iter()
                    .map(|(i, _, _)| i)
                    .min_by_key(|i| insts.iter().position(|x| x == *i))
                    .expect("run is not empty");
                replace.push((first, code));
            }
        }
        if replace.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(insts.len());
        for i in insts {
            if let Some((_, code)) = replace.iter().find(|(first, _)| *first == i) {
                out.extend(code.iter().copied());
            }
            if !removed.contains(&i) {
                out.push(i);
            }
        }
        f.blocks[b.index()].insts = out;
    }
    Ok(())
}
