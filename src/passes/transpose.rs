//! Transposed weights: a time loop's `d · wᵀ` against a weight `w` defined outside
//! the loop (backpropagation through a recurrent kernel, at every step) becomes
//! `d · t` with `t = transpose(w)` computed once before the loop; so do the
//! products of a fully unrolled loop that read the same `w`.
//!
//! The host GEMM repacks an operand it reads transposed at every call: in W3's
//! training step that repacking took 13% of the time (`perf`), and reading a
//! contiguous transpose instead made the step 10% faster (W3 train 40.5 → 36.6 ms,
//! W5 31.3 → 28.2 ms at one thread, `lstmc bench --phase train`, alternating runs).
//! Batches of at most `FEW_ROWS` rows are left alone: their products run on
//! kernels that read `w` transposed as it is (W1, the tutorial's W2), and there the
//! transpose would cost more than it saves.

use super::Options;
use crate::ir::{Block, Function, Inst, IrError, Op, Value};
use std::collections::HashSet;

/// Products with at most this many rows of `d` keep reading `w` transposed (the
/// few-row kernels' limit, `Tuning::few_rows_max`).
const FEW_ROWS: usize = 4;

/// Products of fewer multiply-adds per step keep reading `w` transposed.
const MIN_WORK: usize = 1 << 15;

/// Runs the pass on every block, outer blocks first.
pub fn run(f: &mut Function, _: &Options) -> Result<(), IrError> {
    for b in f.reachable_blocks() {
        transpose_in(f, b)?;
    }
    Ok(())
}

/// In block `b`: the qualifying `matmul_bt`s, directly in `b` or directly in the body
/// of a loop of `b` (reading a weight from outside that body), grouped by weight.
/// A weight read so more than once (in a loop, or at several unrolled steps) is
/// transposed once, before its first reader, and they all read the transpose.
fn transpose_in(f: &mut Function, b: Block) -> Result<(), IrError> {
    // Per weight: the position in `b` of its first reader, how often it is read, and
    // the `matmul_bt`s to rewrite.
    let mut sites: Vec<(Value, usize, usize, Vec<Inst>)> = Vec::new();
    let mut note =
        |w: Value, pos: usize, reads: usize, i: Inst| match sites.iter_mut().find(|s| s.0 == w) {
            Some(s) => {
                s.2 += reads;
                s.3.push(i);
            }
            None => sites.push((w, pos, reads, vec![i])),
        };
    for (pos, &i) in f.block(b).insts.iter().enumerate() {
        match f.inst(i).op {
            Op::MatMulBT if qualifies(f, i) => note(f.inst(i).args[1], pos, 1, i),
            Op::Loop { body, steps, .. } => {
                let outside: HashSet<Value> = f.free_uses(body).into_iter().collect();
                for &j in &f.block(body).insts {
                    let w = f.inst(j).args.get(1).copied();
                    if f.inst(j).op == Op::MatMulBT
                        && w.is_some_and(|w| outside.contains(&w))
                        && qualifies(f, j)
                    {
                        note(f.inst(j).args[1], pos, steps, j);
                    }
                }
            }
            _ => {}
        }
    }
    // Insert from the last position back, so that earlier positions stay valid.
    sites.sort_by_key(|s| std::cmp::Reverse(s.1));
    for (w, pos, reads, readers) in sites {
        if reads < 2 {
            continue;
        }
        let t = f.make(Op::Transpose, vec![w], f.inst(readers[0]).origin)?;
        f.blocks[b.index()].insts.insert(pos, t);
        let tv = f.result(t);
        for i in readers {
            let inst = &mut f.insts[i.index()];
            inst.op = Op::MatMul;
            inst.args[1] = tv;
        }
    }
    Ok(())
}

/// Whether a `matmul_bt` is large enough, and has enough rows, to read a transpose.
fn qualifies(f: &Function, i: Inst) -> bool {
    let d = f.inst(i);
    let (ds, ws) = (f.shape(d.args[0]), f.shape(d.args[1]));
    let n = ds.last().copied().unwrap_or(1);
    let rows: usize = ds[..ds.len().saturating_sub(1)].iter().product();
    let k = ws.first().copied().unwrap_or(1);
    rows > FEW_ROWS && rows * n * k >= MIN_WORK
}
