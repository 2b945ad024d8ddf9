//! Time reversals moved to the smaller operand, or dropped.
//!
//! Backpropagation through time runs the steps backwards, so a backward loop stacks
//! its per-step values in reverse time order, and autodiff reverses them
//! (`reverse_time`, a copy) where time order is needed. Two consumers only need
//! both of their operands in the same order, whichever it is:
//! - `matmul_at(a, d)` sums `aᵀ·d` over all (batch, step) rows, so
//!   `matmul_at(a, rev(d)) = matmul_at(rev(a), d)`: the reversal moves to the operand
//!   with fewer columns, and two reversals cancel. W3's training step reversed its
//!   6.5 MB of gate adjoints to pair them with the 0.4 MB input; now it reverses the
//!   input.
//! - `sum_rows(rev(d)) = sum_rows(d)`.
//!
//! Reversals left without readers go with dead-code elimination.

use super::Options;
use crate::ir::{Function, IrError, Op, Value};

/// What `v` reverses, if it is a `reverse_time`.
fn reversed(f: &Function, v: Value) -> Option<Value> {
    let i = f.def_inst(v)?;
    (f.inst(i).op == Op::ReverseTime).then(|| f.inst(i).args[0])
}

/// The columns of a sequence `[batch, steps, columns]`, if `v` is one.
fn columns(f: &Function, v: Value) -> Option<usize> {
    match f.shape(v) {
        &[_, _, c] => Some(c),
        _ => None,
    }
}

/// Runs the pass on every block, then dead-code elimination.
pub fn run(f: &mut Function, options: &Options) -> Result<(), IrError> {
    for b in f.reachable_blocks() {
        for i in f.block(b).insts.clone() {
            let d = f.inst(i).clone();
            let args = match d.op {
                Op::SumRows => match reversed(f, d.args[0]) {
                    Some(s) => vec![s],
                    None => continue,
                },
                Op::MatMulAT => {
                    let (a, g) = (d.args[0], d.args[1]);
                    let (Some(ca), Some(cg)) = (columns(f, a), columns(f, g)) else {
                        continue;
                    };
                    match (reversed(f, a), reversed(f, g)) {
                        (Some(a), Some(g)) => vec![a, g],
                        (Some(a), None) if cg < ca => vec![a, reverse_before(f, b, i, g)?],
                        (None, Some(g)) if ca < cg => vec![reverse_before(f, b, i, a)?, g],
                        _ => continue,
                    }
                }
                _ => continue,
            };
            f.insts[i.index()].args = args;
        }
    }
    super::dce::run(f, options)
}

/// A new `reverse_time` of `v`, placed in block `b` just before instruction `at`.
fn reverse_before(
    f: &mut Function,
    b: crate::ir::Block,
    at: crate::ir::Inst,
    v: Value,
) -> Result<Value, IrError> {
    let r = f.make(Op::ReverseTime, vec![v], f.inst(at).origin)?;
    let pos = f
        .block(b)
        .insts
        .iter()
        .position(|&j| j == at)
        .ok_or_else(|| IrError("reverse: an instruction outside its block".into()))?;
    f.blocks[b.index()].insts.insert(pos, r);
    Ok(f.result(r))
}
