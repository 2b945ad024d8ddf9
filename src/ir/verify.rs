//! The verifier: the invariants every pass must keep.
//!
//! - every value is defined once, by a block parameter or an instruction result;
//! - every use is dominated by its definition: defined earlier in the same
//!   block, or a parameter of it, or defined before the loop in an enclosing block;
//! - every instruction's result types are what [`infer`] gives for its operands;
//! - a loop body's parameters are `(index, carried...)`, it ends with exactly one
//!   `yield` whose operands match the carried types and whose per-step values
//!   stack into the loop's remaining results;
//! - every block belongs to at most one loop, and the outputs are defined in the entry block.

use super::{infer, Block, Function, Inst, IrError, Op, Ty, Value, ValueDef};
use std::collections::HashSet;

/// Checks a function; the first broken invariant is the error.
pub fn verify(f: &Function) -> Result<(), IrError> {
    let mut v = Verifier {
        f,
        visible: HashSet::new(),
        seen_blocks: HashSet::new(),
    };
    if f.block(f.entry).params.len() != f.input_roles.len() {
        return Err(IrError(
            "entry parameters and input roles differ in number".into(),
        ));
    }
    v.block(f.entry, None)?;
    for (role, out) in &f.outputs {
        if !v.visible.contains(out) {
            return Err(IrError(format!(
                "output {role} = {out} is not defined in the entry block"
            )));
        }
        if f.ty(*out) == &Ty::Index {
            return Err(IrError(format!("output {role} is an index")));
        }
    }
    Ok(())
}

struct Verifier<'a> {
    f: &'a Function,
    /// Values visible at the current point (definitions dominate the point).
    visible: HashSet<Value>,
    seen_blocks: HashSet<Block>,
}

impl Verifier<'_> {
    fn block(&mut self, b: Block, loop_inst: Option<Inst>) -> Result<(), IrError> {
        if !self.seen_blocks.insert(b) {
            return Err(IrError(format!("{b} is used by more than one loop")));
        }
        let data = self.f.block(b);
        for (i, &p) in data.params.iter().enumerate() {
            if self.f.values[p.index()].def != ValueDef::Param(b, i) {
                return Err(IrError(format!(
                    "{p} is listed as parameter {i} of {b} but defined elsewhere"
                )));
            }
            self.visible.insert(p);
        }
        let mut defined_here: Vec<Value> = data.params.clone();
        for (pos, &i) in data.insts.iter().enumerate() {
            let inst = self.f.inst(i);
            for a in &inst.args {
                if !self.visible.contains(a) {
                    return Err(IrError(format!(
                        "{i} ({}) uses {a} where it is not defined",
                        inst.op.mnemonic()
                    )));
                }
            }
            let arg_tys: Vec<&Ty> = inst.args.iter().map(|&a| self.f.ty(a)).collect();
            let expected = match &inst.op {
                Op::Loop {
                    body,
                    steps,
                    per_iter,
                } => {
                    self.loop_types(i, *body, *steps, *per_iter)?;
                    self.block(*body, Some(i))?;
                    inst.results.iter().map(|&r| self.f.ty(r).clone()).collect()
                }
                Op::Yield => {
                    if loop_inst.is_none() || pos + 1 != data.insts.len() {
                        return Err(IrError(format!("{i}: yield must end a loop body")));
                    }
                    vec![]
                }
                op => infer(op, &arg_tys).map_err(|e| IrError(format!("{i}: {e}")))?,
            };
            let got: Vec<Ty> = inst.results.iter().map(|&r| self.f.ty(r).clone()).collect();
            if got != expected {
                return Err(IrError(format!(
                    "{i} ({}): results typed {:?}, expected {:?}",
                    inst.op.mnemonic(),
                    got,
                    expected
                )));
            }
            for (k, &r) in inst.results.iter().enumerate() {
                if self.f.values[r.index()].def != ValueDef::Result(i, k) {
                    return Err(IrError(format!(
                        "{r} is listed as result {k} of {i} but defined elsewhere"
                    )));
                }
                if !self.visible.insert(r) {
                    return Err(IrError(format!("{r} is defined twice")));
                }
                defined_here.push(r);
            }
        }
        if loop_inst.is_some()
            && !matches!(
                data.insts.last().map(|&i| &self.f.inst(i).op),
                Some(Op::Yield)
            )
        {
            return Err(IrError(format!("loop body {b} does not end with yield")));
        }
        // Leaving a loop body: its values are not visible outside.
        if loop_inst.is_some() {
            for v in defined_here {
                self.visible.remove(&v);
            }
        }
        Ok(())
    }

    fn loop_types(
        &self,
        i: Inst,
        body: Block,
        steps: usize,
        per_iter: usize,
    ) -> Result<(), IrError> {
        let f = self.f;
        let inst = f.inst(i);
        let params = &f.block(body).params;
        let n = inst.args.len();
        let err = |m: String| Err(IrError(format!("{i} (loop): {m}")));
        if steps == 0 || per_iter == 0 {
            return err("zero steps".into());
        }
        if params.len() != n + 1 || f.ty(params[0]) != &Ty::Index {
            return err(format!("body {body} must take (index, {n} carried values)"));
        }
        for (k, (&a, &p)) in inst.args.iter().zip(&params[1..]).enumerate() {
            if f.ty(a) != f.ty(p) {
                return err(format!(
                    "carried value {k} typed {} outside, {} in the body",
                    f.ty(a),
                    f.ty(p)
                ));
            }
        }
        let Some(&last) = f.block(body).insts.last() else {
            return err("empty body".into());
        };
        let y = f.inst(last);
        let Some(stacked) = inst.results.len().checked_sub(n) else {
            return err("fewer results than carried values".into());
        };
        if y.args.len() != n + stacked * per_iter {
            return err("yield and loop results differ in number".into());
        }
        for k in 0..n {
            if f.ty(y.args[k]) != f.ty(params[k + 1])
                || f.ty(inst.results[k]) != f.ty(params[k + 1])
            {
                return err(format!("carried value {k} changes type"));
            }
        }
        for s in 0..stacked {
            let result = f.shape(inst.results[n + s]);
            for j in 0..per_iter {
                let step = f.shape(y.args[n + j * stacked + s]);
                let want: Vec<usize> = match step.split_first() {
                    Some((&b, rest)) => [&[b, steps * per_iter][..], rest].concat(),
                    None => return err("stacked value must have a batch axis".into()),
                };
                if result != want.as_slice() {
                    return err(format!(
                        "stacked result {s} is {:?}, expected {:?}",
                        result, want
                    ));
                }
            }
        }
        Ok(())
    }
}
