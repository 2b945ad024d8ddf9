//! Reverse-mode automatic differentiation of the forward IR.
//!
//! [`gradient`] turns a lowered forward function into one that also takes
//! `dy`, the gradient of the loss with respect to the output, and returns the
//! gradient with respect to `x` and to every weight. It is the forward
//! function, with every loop also stacking the per-step values its backward
//! needs (the tape), followed by one adjoint rule per instruction, in reverse:
//!
//! | forward | backward |
//! |---|---|
//! | `matmul(a, w)` | `da += dy · wᵀ`, `dw += aᵀ · dy` |
//! | `bias_add(a, b)` | `da += dy`, `db += sum_rows(dy)` |
//! | `add`, `sub`, `mul` | the sum, difference and product rules |
//! | `act(x) = y` | `dx += dy · act'(x)` (from `x` and `y`) |
//! | `one_minus(x)` | `dx -= dy` |
//! | `softmax(x) = y` | `dx += y · (dy - sum(dy · y))` |
//! | `slice_last`, `row`, `time_step` | the adjoint padded back into place |
//! | `loop` | a loop over the steps in reverse: see below |
//!
//! Backpropagation through time is the rule for `loop`: a loop of the same
//! length whose step `j` differentiates forward step `k = T-1-j`, reading that
//! step's values from the tape. It carries the adjoints of the carried values
//! (from step `k` to step `k-1`) and accumulators for the values the body reads
//! from outside (weights), and stacks the adjoint of each step's input slice.
//! Stateful layers' initial states are inputs without gradients: the gradient
//! stops at the batch boundary, as in Keras.

use crate::ir::{
    BinOp, Block, Function, GradRole, InputRole, IrError, Op, OutputRole, Ty, Value, ValueDef,
};
use crate::model::{Loss, Optimizer};
use std::collections::HashMap;

/// The gradient function of a lowered forward function.
pub fn gradient(forward: &Function) -> Result<Function, IrError> {
    differentiate(forward, |g, y| {
        Ok(g.add_input(InputRole::DY, g.shape(y).to_vec()))
    })
}

/// The train-step function of a lowered forward function: one call computes the
/// prediction, the loss against the `target` input, the gradients, and applies
/// `optimizer` to every weight. Inputs: the forward's, then `target`, the learning
/// rate of the step ([`InputRole::Hyper`]) and two slots per weight. Outputs: `y`, the
/// final states, the loss, and every weight and slot updated
/// ([`OutputRole::Updated`], written in place by the generated code). Sparse targets
/// are given one-hot.
pub fn train_step(
    forward: &Function,
    loss: Loss,
    optimizer: Optimizer,
) -> Result<Function, IrError> {
    // Differentiate the gate-fused, hoisted forward: its backward is fused too (per step one
    // `d · wᵀ` and one `aᵀ · d` for all gates, and the input projection's gradient as one
    // product over all steps), instead of one product per gate and padding per weight.
    let mut forward = forward.clone();
    let opts = crate::passes::Options::default();
    crate::passes::optimize(&mut forward, &opts, Some("hoist"))?;
    let forward = &forward;
    let kind = match loss {
        Loss::SparseCategoricalCrossentropy => Loss::CategoricalCrossentropy,
        k => k,
    };
    let mut g = differentiate(forward, |g, y| {
        let t = g.add_input(InputRole::Target, g.shape(y).to_vec());
        let entry = g.entry;
        let value = g
            .push(entry, Op::LossGrad(kind), &[y, t], None)?
            .ok_or_else(|| IrError("loss without result".into()))?;
        let inst = g
            .def_inst(value)
            .ok_or_else(|| IrError("loss without instruction".into()))?;
        g.outputs.push((OutputRole::Loss, value));
        Ok(g.inst(inst).results[1])
    })?;
    let entry = g.entry;
    let hyper = g.add_input(InputRole::Hyper, vec![1]);
    let params: Vec<(InputRole, Value)> = g.inputs().collect();
    let mut outputs = Vec::new();
    let mut updates = Vec::new();
    for (role, v) in std::mem::take(&mut g.outputs) {
        match role {
            OutputRole::Grad(GradRole(w @ InputRole::Weight { .. })) => updates.push((w, v)),
            OutputRole::Grad(_) => {}
            other => outputs.push((other, v)),
        }
    }
    // The updates come last: nothing reads a weight after its update.
    for (role, grad) in updates {
        let InputRole::Weight { layer, name } = role else {
            continue;
        };
        let w = params
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, p)| *p)
            .ok_or_else(|| IrError(format!("no input for {role}")))?;
        let shape = g.shape(w).to_vec();
        let slots: Vec<Value> = (0..2)
            .map(|index| g.add_input(InputRole::Slot { layer, name, index }, shape.clone()))
            .collect();
        let first = g
            .push(
                entry,
                Op::Update(optimizer),
                &[w, grad, slots[0], slots[1], hyper],
                None,
            )?
            .ok_or_else(|| IrError("update without result".into()))?;
        let inst = g
            .def_inst(first)
            .ok_or_else(|| IrError("update without instruction".into()))?;
        let results = g.inst(inst).results.clone();
        outputs.push((OutputRole::Updated(role), results[0]));
        for (index, &r) in results[1..].iter().enumerate() {
            outputs.push((
                OutputRole::Updated(InputRole::Slot { layer, name, index }),
                r,
            ));
        }
    }
    g.outputs = outputs;
    Ok(g)
}

/// Reverse mode over `forward`: a copy with tapes, then the adjoint of every
/// instruction. `seed` makes the adjoint of the output `y` (an input, or a loss).
fn differentiate(
    forward: &Function,
    seed: impl FnOnce(&mut Function, Value) -> Result<Value, IrError>,
) -> Result<Function, IrError> {
    let mut g = forward.clone();
    let y = forward
        .outputs
        .iter()
        .find(|(r, _)| *r == OutputRole::Y)
        .map(|(_, v)| *v)
        .ok_or_else(|| IrError("the function has no output y".into()))?;
    let tapes = add_tapes(&mut g)?;
    let entry = g.entry;
    let insts = g.block(entry).insts.clone();
    let dy = seed(&mut g, y)?;
    let mut d = Adjoints {
        block: entry,
        adj: HashMap::new(),
    };
    d.adj.insert(y, dy);
    for &i in insts.iter().rev() {
        let data = g.inst(i).clone();
        if !data.results.iter().any(|r| d.adj.contains_key(r)) {
            continue;
        }
        if let Op::Loop {
            body,
            steps,
            per_iter,
        } = data.op
        {
            if per_iter != 1 {
                return Err(IrError(
                    "differentiate the lowered IR, before unrolling".into(),
                ));
            }
            loop_rule(&mut g, &mut d, i, body, steps, &tapes[&i])?;
        } else {
            rule(&mut g, &mut d, i, &|v| v)?;
        }
    }
    let params: Vec<(InputRole, Value)> = g.inputs().collect();
    for (role, p) in params {
        if matches!(role, InputRole::X | InputRole::Weight { .. }) {
            let grad = match d.adj.get(&p) {
                Some(&v) => v,
                None => {
                    let shape = g.shape(p).to_vec();
                    d.emit(&mut g, Op::Zeros(shape), &[])?
                }
            };
            g.outputs.push((OutputRole::Grad(GradRole(role)), grad));
        }
    }
    Ok(g)
}

/// Where adjoint code goes, and the adjoints known so far.
struct Adjoints {
    block: Block,
    adj: HashMap<Value, Value>,
}

impl Adjoints {
    fn emit(&self, g: &mut Function, op: Op, args: &[Value]) -> Result<Value, IrError> {
        g.push(self.block, op, args, None)?
            .ok_or_else(|| IrError("op without result".into()))
    }

    /// `adj[v] += d`.
    fn add(&mut self, g: &mut Function, v: Value, d: Value) -> Result<(), IrError> {
        let sum = match self.adj.get(&v) {
            Some(&a) => self.emit(g, Op::Binary(BinOp::Add), &[a, d])?,
            None => d,
        };
        self.adj.insert(v, sum);
        Ok(())
    }

    /// `adj[v] -= d`.
    fn sub(&mut self, g: &mut Function, v: Value, d: Value) -> Result<(), IrError> {
        let base = match self.adj.get(&v) {
            Some(&a) => a,
            None => self.emit(g, Op::Zeros(g.shape(v).to_vec()), &[])?,
        };
        let diff = self.emit(g, Op::Binary(BinOp::Sub), &[base, d])?;
        self.adj.insert(v, diff);
        Ok(())
    }
}

/// The adjoint rule of one instruction. `fwd` maps a forward value to where the
/// backward code can read it (itself, or its step of the tape inside a loop).
fn rule(
    g: &mut Function,
    d: &mut Adjoints,
    i: crate::ir::Inst,
    fwd: &dyn Fn(Value) -> Value,
) -> Result<(), IrError> {
    let data = g.inst(i).clone();
    let Some(&r) = data.results.first() else {
        return Ok(());
    };
    let Some(&dy) = d.adj.get(&r) else {
        return Ok(());
    };
    let a = |k: usize| data.args[k];
    match &data.op {
        Op::Zeros(_) | Op::Yield => {}
        Op::MatMul => {
            let da = d.emit(g, Op::MatMulBT, &[dy, fwd(a(1))])?;
            d.add(g, a(0), da)?;
            let dw = d.emit(g, Op::MatMulAT, &[fwd(a(0)), dy])?;
            d.add(g, a(1), dw)?;
        }
        Op::BiasAdd => {
            d.add(g, a(0), dy)?;
            let db = d.emit(g, Op::SumRows, &[dy])?;
            d.add(g, a(1), db)?;
        }
        Op::Binary(BinOp::Add) => {
            d.add(g, a(0), dy)?;
            d.add(g, a(1), dy)?;
        }
        Op::Binary(BinOp::Sub) => {
            d.add(g, a(0), dy)?;
            d.sub(g, a(1), dy)?;
        }
        Op::Binary(BinOp::Mul) => {
            let da = d.emit(g, Op::Binary(BinOp::Mul), &[dy, fwd(a(1))])?;
            d.add(g, a(0), da)?;
            let db = d.emit(g, Op::Binary(BinOp::Mul), &[dy, fwd(a(0))])?;
            d.add(g, a(1), db)?;
        }
        Op::Act(act) => {
            // The pre-activation goes to the tape only where the derivative needs it.
            let dx = if act.grad_from_output() {
                d.emit(g, Op::ActGrad(*act), &[fwd(r), dy])?
            } else {
                d.emit(g, Op::ActGrad(*act), &[fwd(a(0)), fwd(r), dy])?
            };
            d.add(g, a(0), dx)?;
        }
        Op::OneMinus => d.sub(g, a(0), dy)?,
        Op::Softmax => {
            let dx = d.emit(g, Op::SoftmaxGrad, &[fwd(r), dy])?;
            d.add(g, a(0), dx)?;
        }
        Op::SliceLast { start, .. } => {
            let total = *g.shape(a(0)).last().unwrap_or(&0);
            let da = d.emit(
                g,
                Op::PadLast {
                    start: *start,
                    total,
                },
                &[dy],
            )?;
            d.add(g, a(0), da)?;
        }
        Op::Row { index } => {
            let rows = g.shape(a(0))[0];
            let da = d.emit(
                g,
                Op::PadRow {
                    index: *index,
                    rows,
                },
                &[dy],
            )?;
            d.add(g, a(0), da)?;
        }
        Op::TimeStep {
            reverse,
            stride: 0,
            offset,
        } if data.args.len() == 1 => {
            let steps = g.shape(a(0))[1];
            let t = if *reverse {
                steps - 1 - offset
            } else {
                *offset
            };
            let da = d.emit(g, Op::PadTime { t, steps }, &[dy])?;
            d.add(g, a(0), da)?;
        }
        op => {
            return Err(IrError(format!(
                "no adjoint rule for {} here",
                op.mnemonic()
            )))
        }
    }
    Ok(())
}

/// For each loop of the entry block: its body's values, each with the loop
/// result that stacks it over the steps.
type Tapes = HashMap<crate::ir::Inst, HashMap<Value, Value>>;

/// Makes every loop also stack, as extra results, every tensor its body
/// computes and the carried values at the start of each step.
fn add_tapes(g: &mut Function) -> Result<Tapes, IrError> {
    let mut tapes = HashMap::new();
    for i in g.block(g.entry).insts.clone() {
        let Op::Loop { body, steps, .. } = g.inst(i).op else {
            continue;
        };
        let mut saved: Vec<Value> = g.block(body).params[1..].to_vec();
        for &bi in &g.block(body).insts {
            saved.extend(
                g.inst(bi)
                    .results
                    .iter()
                    .copied()
                    .filter(|&v| g.ty(v) != &Ty::Index),
            );
        }
        let yield_inst = *g
            .block(body)
            .insts
            .last()
            .ok_or_else(|| IrError("empty loop body".into()))?;
        let mut map = HashMap::new();
        for v in saved {
            let shape = g.shape(v).to_vec();
            let stacked = [&[shape[0], steps][..], &shape[1..]].concat();
            g.insts[yield_inst.index()].args.push(v);
            let idx = g.insts[i.index()].results.len();
            let r = Value(g.values.len() as u32);
            g.values.push(crate::ir::ValueData {
                ty: Ty::Tensor(stacked),
                def: ValueDef::Result(i, idx),
            });
            g.insts[i.index()].results.push(r);
            map.insert(v, r);
        }
        tapes.insert(i, map);
    }
    Ok(tapes)
}

/// Weights of at least this many elements get their gradient as one product after the
/// backward loop instead of a sum over steps. Measured (`lstmc bench --phase train`,
/// 2026-12-04): W1 (3×12 recurrent kernel) 1.39 µs summed, 1.67 µs deferred; W2
/// (128×512) 11.0 ms per epoch summed, 5.3 ms deferred.
const DEFER_MIN: usize = 4096;

/// Backpropagation through time: the adjoint of a loop.
fn loop_rule(
    g: &mut Function,
    d: &mut Adjoints,
    l: crate::ir::Inst,
    body: Block,
    steps: usize,
    tape: &HashMap<Value, Value>,
) -> Result<(), IrError> {
    let data = g.inst(l).clone();
    let params = g.block(body).params.clone();
    let k = params[0];
    let n = data.args.len();
    let fyield = g
        .inst(
            *g.block(body)
                .insts
                .last()
                .ok_or_else(|| IrError("empty body".into()))?,
        )
        .clone();
    let n_stacked = fyield.args.len() - n - tape.len();
    let body_insts: Vec<crate::ir::Inst> =
        g.block(body).insts[..g.block(body).insts.len() - 1].to_vec();
    let defined: std::collections::HashSet<Value> = params
        .iter()
        .copied()
        .chain(body_insts.iter().flat_map(|&bi| g.inst(bi).results.clone()))
        .collect();
    // Outer values read by the body (other than through a time step), which get accumulators.
    let mut outer: Vec<Value> = Vec::new();
    let mut steps_read: Vec<(crate::ir::Inst, Value, bool)> = Vec::new(); // (time_step, sequence, reverse)
    for &bi in &body_insts {
        let bd = g.inst(bi);
        if let Op::TimeStep {
            reverse,
            stride,
            offset,
        } = bd.op
        {
            if bd.args.len() == 2 {
                if stride != 1 || offset != 0 {
                    return Err(IrError(
                        "differentiate the lowered IR, before unrolling".into(),
                    ));
                }
                steps_read.push((bi, bd.args[0], reverse));
                continue;
            }
        }
        for &a in &bd.args {
            if !defined.contains(&a) && !outer.contains(&a) && g.ty(a) != &Ty::Index {
                outer.push(a);
            }
        }
    }
    // Products `a_t · w` of a per-step value (on the tape) by an outer weight: their weight
    // gradient is not accumulated step by step (a `[K, N]` product and sum per step) but
    // taken once after the loop, `Σ_t a_tᵀ · d_t` as one product over the stacked steps.
    // Small weights keep the running sum: stacking and reversing would cost more.
    let deferred: Vec<crate::ir::Inst> = body_insts
        .iter()
        .copied()
        .filter(|&bi| {
            let bd = g.inst(bi);
            bd.op == Op::MatMul
                && tape.contains_key(&bd.args[0])
                && outer.contains(&bd.args[1])
                && g.shape(bd.args[1]).iter().product::<usize>() >= DEFER_MIN
        })
        .collect();
    // Outer values read only as such weights need no accumulator.
    outer.retain(|&v| {
        body_insts.iter().any(|&bi| {
            let bd = g.inst(bi);
            bd.args
                .iter()
                .enumerate()
                .any(|(pos, &a)| a == v && !(pos == 1 && deferred.contains(&bi)))
        })
    });
    // The adjoints flowing in.
    let mut init = Vec::new();
    for &r in &data.results[..n] {
        init.push(match d.adj.get(&r) {
            Some(&a) => a,
            None => d.emit(g, Op::Zeros(g.shape(r).to_vec()), &[])?,
        });
    }
    for &v in &outer {
        init.push(d.emit(g, Op::Zeros(g.shape(v).to_vec()), &[])?);
    }
    let stacked_adj: Vec<Option<Value>> = data.results[n..n + n_stacked]
        .iter()
        .map(|r| d.adj.get(r).copied())
        .collect();
    // The backward body: step j differentiates forward step T-1-j.
    let bb = g.new_block();
    let j = g.add_param(bb, Ty::Index);
    let dcarried: Vec<Value> = params[1..]
        .iter()
        .map(|&p| g.add_param(bb, g.ty(p).clone()))
        .collect();
    let accs: Vec<Value> = outer
        .iter()
        .map(|&v| g.add_param(bb, g.ty(v).clone()))
        .collect();
    let mut inner = Adjoints {
        block: bb,
        adj: HashMap::new(),
    };
    // Each body value at this step, read from the tape (once per value).
    let mut at_step: HashMap<Value, Value> = HashMap::new();
    for (&v, &t) in tape {
        let s = inner.emit(
            g,
            Op::TimeStep {
                reverse: true,
                stride: 1,
                offset: 0,
            },
            &[t, j],
        )?;
        at_step.insert(v, s);
    }
    let fwd = |v: Value| at_step.get(&v).copied().unwrap_or(v);
    // Seeds: the carried values' adjoints, and each step's slice of the stacked results' adjoints.
    for (idx, &c) in fyield.args[..n].iter().enumerate() {
        inner.add(g, c, dcarried[idx])?;
    }
    for (s, adj) in stacked_adj.iter().enumerate() {
        if let Some(a) = adj {
            let step = inner.emit(
                g,
                Op::TimeStep {
                    reverse: true,
                    stride: 1,
                    offset: 0,
                },
                &[*a, j],
            )?;
            inner.add(g, fyield.args[n + s], step)?;
        }
    }
    // Per deferred product: the adjoint of its result at each step, to stack.
    let mut deferred_dy: Vec<(crate::ir::Inst, Value)> = Vec::new();
    for &bi in body_insts.iter().rev() {
        if steps_read.iter().any(|(s, _, _)| *s == bi) || g.inst(bi).args.contains(&k) {
            continue;
        }
        if deferred.contains(&bi) {
            let bd = g.inst(bi).clone();
            if let Some(&dy) = inner.adj.get(&bd.results[0]) {
                let da = inner.emit(g, Op::MatMulBT, &[dy, fwd(bd.args[1])])?;
                inner.add(g, bd.args[0], da)?;
                deferred_dy.push((bi, dy));
            }
            continue;
        }
        rule(g, &mut inner, bi, &fwd)?;
    }
    // Yield: carried adjoints for the step before, accumulators, each step's input adjoint.
    let mut yielded = Vec::new();
    for &p in &params[1..] {
        yielded.push(match inner.adj.get(&p) {
            Some(&a) => a,
            None => inner.emit(g, Op::Zeros(g.shape(p).to_vec()), &[])?,
        });
    }
    for (idx, &v) in outer.iter().enumerate() {
        yielded.push(match inner.adj.get(&v) {
            Some(&a) => inner.emit(g, Op::Binary(BinOp::Add), &[accs[idx], a])?,
            None => accs[idx],
        });
    }
    for &(s, _, _) in &steps_read {
        let r = g.inst(s).results[0];
        yielded.push(match inner.adj.get(&r) {
            Some(&a) => a,
            None => inner.emit(g, Op::Zeros(g.shape(r).to_vec()), &[])?,
        });
    }
    yielded.extend(deferred_dy.iter().map(|&(_, dy)| dy));
    let mut tys: Vec<Ty> = yielded[..n + outer.len()]
        .iter()
        .map(|&v| g.ty(v).clone())
        .collect();
    for &v in &yielded[n + outer.len()..] {
        let s = g.shape(v).to_vec();
        tys.push(Ty::Tensor([&[s[0], steps][..], &s[1..]].concat()));
    }
    g.push_typed(bb, Op::Yield, yielded, vec![], None);
    let bl = g.push_typed(
        d.block,
        Op::Loop {
            body: bb,
            steps,
            per_iter: 1,
        },
        init,
        tys,
        None,
    );
    let res = g.inst(bl).results.clone();
    for (idx, &a) in data.args.iter().enumerate() {
        d.add(g, a, res[idx])?;
    }
    for (idx, &v) in outer.iter().enumerate() {
        d.add(g, v, res[n + idx])?;
    }
    let stacked_dy = n + outer.len() + steps_read.len();
    for (idx, &(bi, _)) in deferred_dy.iter().enumerate() {
        // Backward step j is forward step T-1-j: reverse the smaller of the two sequences.
        let (a, w) = (g.inst(bi).args[0], g.inst(bi).args[1]);
        let (mut seq_a, mut seq_d) = (tape[&a], res[stacked_dy + idx]);
        if g.shape(seq_a).last() <= g.shape(seq_d).last() {
            seq_a = d.emit(g, Op::ReverseTime, &[seq_a])?;
        } else {
            seq_d = d.emit(g, Op::ReverseTime, &[seq_d])?;
        }
        let dw = d.emit(g, Op::MatMulAT, &[seq_a, seq_d])?;
        d.add(g, w, dw)?;
    }
    for (idx, &(_, seq, reverse)) in steps_read.iter().enumerate() {
        // Stacked in backward order: step T-1-j. A forward that read time T-1-k
        // (go_backwards) thus gets its adjoints in time order already.
        let stacked = res[n + outer.len() + idx];
        let ds = if reverse {
            stacked
        } else {
            d.emit(g, Op::ReverseTime, &[stacked])?
        };
        d.add(g, seq, ds)?;
    }
    Ok(())
}
