//! Unrolling. A loop of at most `full_unroll_max` steps is replaced by a copy
//! of its body per step (step numbers become constants, stacked outputs a
//! `stack`); a longer loop gets a body of `f` copies, `f` the largest divisor
//! of its length up to `partial_unroll_max`, and yields `f` steps per iteration.
//! A longer loop that starts from zero states and stacks nothing (a layer that is
//! not stateful and returns its last output) has its first iteration peeled off
//! before it, so that `fold` removes the first step's product of zeros there too.

use super::Options;
use crate::ir::{Block, Function, Inst, IrError, Op, Ty, Value};
use std::collections::HashMap;

/// Runs the pass on every loop of the entry block.
pub fn run(f: &mut Function, o: &Options) -> Result<(), IrError> {
    let entry = f.entry;
    let mut out = Vec::new();
    for i in f.block(entry).insts.clone() {
        let Op::Loop {
            body,
            steps,
            per_iter,
        } = f.inst(i).op
        else {
            out.push(i);
            continue;
        };
        if steps <= o.full_unroll_max {
            out.extend(full(f, i, body, steps, per_iter)?);
        } else {
            let factor = (2..=o.partial_unroll_max.min(steps))
                .rev()
                .find(|d| steps % d == 0);
            if let Some(factor) = factor {
                let d = f.inst(i);
                let zeros = d
                    .args
                    .iter()
                    .all(|&a| matches!(f.def_op(a), Some(Op::Zeros(_))));
                let stacks = d.results.len() > d.args.len();
                let first = if zeros && !stacks && steps > factor {
                    out.extend(peel(f, i, body, factor)?);
                    factor
                } else {
                    0
                };
                partial(f, i, body, steps, per_iter, factor, first)?;
            }
            out.push(i);
        }
    }
    f.blocks[entry.index()].insts = out;
    Ok(())
}

/// Clones the body once for iteration `k` (if `k` is known) or for copy `j` of `factor`
/// (with the step number still the body's `k` parameter). Returns the new instructions
/// and the yield's operands, remapped.
fn clone_body(
    f: &mut Function,
    body: Block,
    map: &mut HashMap<Value, Value>,
    step: Step,
) -> Result<(Vec<Inst>, Vec<Value>), IrError> {
    let mut code = Vec::new();
    for i in f.block(body).insts.clone() {
        let d = f.inst(i).clone();
        let args: Vec<Value> = d.args.iter().map(|a| *map.get(a).unwrap_or(a)).collect();
        if d.op == Op::Yield {
            return Ok((code, args));
        }
        let (op, args) = match (d.op.clone(), step) {
            (
                Op::TimeStep {
                    reverse,
                    stride,
                    offset,
                },
                Step::Known(k),
            ) if args.len() == 2 => (
                Op::TimeStep {
                    reverse,
                    stride: 0,
                    offset: k * stride + offset,
                },
                vec![args[0]],
            ),
            (
                Op::TimeStep {
                    reverse,
                    stride,
                    offset,
                },
                Step::Copy { j, factor, first },
            ) if args.len() == 2 => (
                Op::TimeStep {
                    reverse,
                    stride: stride * factor,
                    offset: offset + (first + j) * stride,
                },
                args,
            ),
            (op, _) => (op, args),
        };
        let tys: Vec<Ty> = d.results.iter().map(|&r| f.ty(r).clone()).collect();
        let n = f.make_inst(op, args, tys, d.origin);
        for (&old, &new) in d.results.iter().zip(&f.inst(n).results.clone()) {
            map.insert(old, new);
        }
        code.push(n);
    }
    Err(IrError(format!("loop body {body} has no yield")))
}

#[derive(Clone, Copy)]
enum Step {
    /// Step number `k`.
    Known(usize),
    /// Copy `j` of `factor` per iteration, in a loop whose step 0 is step `first`.
    Copy {
        j: usize,
        factor: usize,
        first: usize,
    },
}

/// Steps `0..count` of a loop body as straight-line code, from the carried values
/// `carried`; `each` sees every step's yielded values. Returns the code and the values
/// carried out of the last step.
fn inline_steps(
    f: &mut Function,
    body: Block,
    mut carried: Vec<Value>,
    count: usize,
    mut each: impl FnMut(&[Value]),
) -> Result<(Vec<Inst>, Vec<Value>), IrError> {
    let params = f.block(body).params.clone();
    let mut code = Vec::new();
    for k in 0..count {
        let mut map: HashMap<Value, Value> = params[1..]
            .iter()
            .copied()
            .zip(carried.iter().copied())
            .collect();
        let (c, y) = clone_body(f, body, &mut map, Step::Known(k))?;
        code.extend(c);
        each(&y);
        carried = y[..carried.len()].to_vec();
    }
    Ok((code, carried))
}

/// The first `count` steps of loop `l` as straight-line code before it; the loop then
/// starts from their carried values. For a loop that carries everything (stacks nothing).
fn peel(f: &mut Function, l: Inst, body: Block, count: usize) -> Result<Vec<Inst>, IrError> {
    let args = f.inst(l).args.clone();
    let (code, carried) = inline_steps(f, body, args, count, |_| {})?;
    f.insts[l.index()].args = carried;
    Ok(code)
}

fn full(
    f: &mut Function,
    l: Inst,
    body: Block,
    steps: usize,
    per_iter: usize,
) -> Result<Vec<Inst>, IrError> {
    let d = f.inst(l).clone();
    let n = d.args.len();
    let n_stacked = d.results.len() - n;
    let mut per_step: Vec<Vec<Value>> = vec![Vec::new(); n_stacked];
    let (mut code, carried) = inline_steps(f, body, d.args.clone(), steps, |y| {
        for j in 0..per_iter {
            for (s, list) in per_step.iter_mut().enumerate() {
                list.push(y[n + j * n_stacked + s]);
            }
        }
    })?;
    for (k, &r) in d.results[..n].iter().enumerate() {
        f.replace_uses(r, carried[k]);
    }
    for (s, &r) in d.results[n..].iter().enumerate() {
        let st = f.make(Op::Stack, per_step[s].clone(), d.origin)?;
        code.push(st);
        let v = f.result(st);
        f.replace_uses(r, v);
    }
    Ok(code)
}

/// Makes loop `l` run `factor` copies of its body per iteration, over its steps from
/// `first` on (the ones before were peeled off).
fn partial(
    f: &mut Function,
    l: Inst,
    body: Block,
    steps: usize,
    per_iter: usize,
    factor: usize,
    first: usize,
) -> Result<(), IrError> {
    let d = f.inst(l).clone();
    let params = f.block(body).params.clone();
    let n = d.args.len();
    let n_stacked = d.results.len() - n;
    let nb = f.new_block();
    let k = f.add_param(nb, Ty::Index);
    let mut carried: Vec<Value> = params[1..]
        .iter()
        .map(|&p| f.ty(p).clone())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| f.add_param(nb, t))
        .collect();
    let mut stacked: Vec<Value> = Vec::new();
    let mut code = Vec::new();
    for j in 0..factor {
        let mut map: HashMap<Value, Value> = HashMap::new();
        map.insert(params[0], k);
        map.extend(params[1..].iter().copied().zip(carried.iter().copied()));
        let (c, y) = clone_body(f, body, &mut map, Step::Copy { j, factor, first })?;
        code.extend(c);
        carried = y[..n].to_vec();
        stacked.extend_from_slice(&y[n..n + per_iter * n_stacked]);
    }
    let mut yielded = carried;
    yielded.extend(stacked);
    let y = f.make_inst(Op::Yield, yielded, vec![], d.origin);
    code.push(y);
    f.blocks[nb.index()].insts = code;
    f.insts[l.index()].op = Op::Loop {
        body: nb,
        steps: (steps - first) / factor,
        per_iter: per_iter * factor,
    };
    Ok(())
}
