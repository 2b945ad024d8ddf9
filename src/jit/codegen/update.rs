//! Optimizer updates: in place, as host vector kernels where the CPU has AVX-512F or
//! AVX2 (`lstmc_update`, which may also compute a few-row weight gradient as it goes), else
//! generated `f32x4` code.

use super::{math, Emitter, Mat, Tuning};
use crate::ir::{Function, IrError, Op, Value as IrValue};
use crate::jit::plan::{Base, Loc, Plan};
use crate::model::Optimizer;
use cranelift_codegen::ir::{types, InstBuilder};
use std::collections::HashMap;

/// The weight gradients `aᵀ · d` over few rows whose only use is a host Adam or
/// RMSprop update later in the same block: `lstmc_update` computes them row by row
/// as it updates, instead of storing them whole (the tutorial's recurrent kernel, its two
/// slots and its gradient overflow the L2 cache; without the gradient they fit). Only
/// where no instruction in between writes over `a` or `d` (the plan may give their
/// slots to later values once the product has read them).
pub(super) fn deferred_outer(
    f: &Function,
    plan: &Plan,
    tuning: &Tuning,
) -> Result<HashMap<IrValue, (IrValue, IrValue)>, IrError> {
    let mut out = HashMap::new();
    if !tuning.wide_updates {
        return Ok(out);
    }
    let uses = f.use_counts();
    let span = |l: &Loc| (l.base, l.offset, l.extent(1));
    let overlap =
        |x: (Base, isize, isize), y: (Base, isize, isize)| x.0 == y.0 && x.1 < y.2 && y.1 < x.2;
    for b in f.reachable_blocks() {
        let insts = &f.block(b).insts;
        for (pos, &i) in insts.iter().enumerate() {
            let d = f.inst(i);
            if d.op != Op::MatMulAT || uses[d.results[0].index()] != 1 {
                continue;
            }
            let g = d.results[0];
            let (la, ld) = (plan.loc(d.args[0])?, plan.loc(d.args[1])?);
            if la.rows > tuning.few_rows_max || la.k.is_some() || ld.k.is_some() {
                continue;
            }
            let Some(at) = insts[pos + 1..].iter().position(|&j| {
                let u = f.inst(j);
                matches!(
                    u.op,
                    Op::Update(Optimizer::Adam { .. } | Optimizer::Rmsprop { .. })
                ) && u.args[1] == g
            }) else {
                continue;
            };
            let between = &insts[pos + 1..pos + 1 + at];
            let mut clobbers = false;
            for &j in between {
                let u = f.inst(j);
                if matches!(u.op, Op::Loop { .. }) {
                    clobbers = true;
                }
                for &r in &u.results {
                    if let Some(l) = plan.locs[r.index()] {
                        clobbers |= overlap(span(&l), span(&la)) || overlap(span(&l), span(&ld));
                    }
                }
            }
            if !clobbers {
                out.insert(g, (d.args[0], d.args[1]));
            }
        }
    }
    Ok(out)
}

impl Emitter<'_, '_, '_> {
    /// One optimizer step, in place, on `w`, with gradient `g`, slots `s1`, `s2` and the
    /// step's learning rate `rate[0]` (`ms` in that order): the formulas of
    /// [`crate::optim::update`], in f32 as Keras runs them. Only a row's real columns are
    /// written: a weight's padding stays zero.
    pub(super) fn update(
        &mut self,
        kind: Optimizer,
        ms: &[Mat],
        outer: Option<(Mat, Mat)>,
    ) -> Result<(), IrError> {
        let (w, g, s1, s2, hyper) = (ms[0], ms[1], ms[2], ms[3], ms[4]);
        let rate = self
            .b
            .ins()
            .load(types::F32, self.flags.write, hyper.ptr, 0);
        let wide = match kind {
            Optimizer::Adam {
                beta_1,
                beta_2,
                epsilon,
                ..
            } => Some((0, [1.0 - beta_1, 1.0 - beta_2, epsilon, 0.0])),
            Optimizer::Rmsprop {
                rho,
                momentum,
                epsilon,
                ..
            } => Some((1, [rho, 1.0 - rho, epsilon, momentum])),
            Optimizer::Sgd { .. } => None,
        };
        if let (Some((code, k)), true) = (wide, self.tuning.wide_updates) {
            let mut args = vec![self.imm(code)];
            args.extend(self.rows_arg(&w));
            match outer {
                Some((a, d)) => {
                    args.extend(self.rows_arg(&a));
                    args.extend(self.rows_arg(&d));
                    args.push(self.imm(a.rows as i64));
                }
                None => {
                    args.extend(self.rows_arg(&g));
                    args.extend([self.imm(0), self.imm(0), self.imm(0)]);
                }
            }
            for m in [s1, s2] {
                args.extend(self.rows_arg(&m));
            }
            args.push(self.imm(w.rows as i64));
            args.push(self.imm(w.cols as i64));
            // Split by rows as the weight's few-row products are (`lstmc_few_rows`).
            let threads = if w.rows * w.cols >= self.tuning.parallel_elems {
                self.tuning.threads
            } else {
                1
            };
            args.push(self.imm(threads as i64));
            args.push(rate);
            for k in k {
                args.push(self.b.ins().f32const(k as f32));
            }
            self.b.ins().call(self.hosts.update, &args);
            return Ok(());
        }
        if outer.is_some() {
            return Err(IrError("a deferred gradient without a wide update".into()));
        }
        self.counted(w.rows, |e, r| {
            let (wr, gr, ar, br) = (e.row(&w, r), e.row(&g, r), e.row(&s1, r), e.row(&s2, r));
            e.columns(w.cols, false, |e, off, ty| {
                let c = |e: &mut Self, v: f64| math::cst(e.b, ty, v as f32);
                let lr = if ty == types::F32 {
                    rate
                } else {
                    e.b.ins().splat(ty, rate)
                };
                let wv = e.load(ty, &w, wr, off);
                let gv = e.load(ty, &g, gr, off);
                let grad_step = e.b.ins().fmul(gv, lr);
                match kind {
                    Optimizer::Sgd {
                        momentum, nesterov, ..
                    } => {
                        if momentum == 0.0 {
                            let nw = e.b.ins().fsub(wv, grad_step);
                            e.store(nw, wr, off);
                        } else {
                            let mv = e.load(ty, &s1, ar, off);
                            let mom = c(e, momentum);
                            let mm = e.b.ins().fmul(mv, mom);
                            let m = e.b.ins().fsub(mm, grad_step);
                            e.store(m, ar, off);
                            let nw = if nesterov {
                                let mm = e.b.ins().fmul(m, mom);
                                let d = e.b.ins().fsub(mm, grad_step);
                                e.b.ins().fadd(wv, d)
                            } else {
                                e.b.ins().fadd(wv, m)
                            };
                            e.store(nw, wr, off);
                        }
                    }
                    Optimizer::Adam {
                        beta_1,
                        beta_2,
                        epsilon,
                        ..
                    } => {
                        let (mv, vv) = (e.load(ty, &s1, ar, off), e.load(ty, &s2, br, off));
                        let (b1, b2, eps) = (c(e, 1.0 - beta_1), c(e, 1.0 - beta_2), c(e, epsilon));
                        let d = e.b.ins().fsub(gv, mv);
                        let d = e.b.ins().fmul(d, b1);
                        let m = e.b.ins().fadd(mv, d);
                        let gg = e.b.ins().fmul(gv, gv);
                        let d = e.b.ins().fsub(gg, vv);
                        let d = e.b.ins().fmul(d, b2);
                        let v = e.b.ins().fadd(vv, d);
                        e.store(m, ar, off);
                        e.store(v, br, off);
                        let num = e.b.ins().fmul(m, lr);
                        let root = e.b.ins().sqrt(v);
                        let den = e.b.ins().fadd(root, eps);
                        let step = e.b.ins().fdiv(num, den);
                        let nw = e.b.ins().fsub(wv, step);
                        e.store(nw, wr, off);
                    }
                    Optimizer::Rmsprop {
                        rho,
                        momentum,
                        epsilon,
                        ..
                    } => {
                        let vv = e.load(ty, &s1, ar, off);
                        let (rh, one_rh, eps) = (c(e, rho), c(e, 1.0 - rho), c(e, epsilon));
                        let a = e.b.ins().fmul(rh, vv);
                        let gg = e.b.ins().fmul(one_rh, gv);
                        let gg = e.b.ins().fmul(gg, gv);
                        let v = e.b.ins().fadd(a, gg);
                        e.store(v, ar, off);
                        let ve = e.b.ins().fadd(v, eps);
                        let root = e.b.ins().sqrt(ve);
                        let inc = e.b.ins().fdiv(grad_step, root);
                        let nw = if momentum > 0.0 {
                            let mv = e.load(ty, &s2, br, off);
                            let mom = c(e, momentum);
                            let mm = e.b.ins().fmul(mom, mv);
                            let m = e.b.ins().fadd(mm, inc);
                            e.store(m, br, off);
                            e.b.ins().fsub(wv, m)
                        } else {
                            e.b.ins().fsub(wv, inc)
                        };
                        e.store(nw, wr, off);
                    }
                }
                Ok(())
            })
        })
    }
}
