//! The IR interpreter: plain Rust, in f64, so that it is an exact oracle for
//! the JIT and for gradient checks. It runs any function the verifier
//! accepts, optimized or not.

use crate::ir::{BinOp, Block, FNode, Function, FusedKernel, Op, Value, PANEL};
use crate::model::{Activation, Loss};
use ndarray::{Array2, ArrayD, Axis, IxDyn};

/// A failure to run a function: wrong inputs, or IR the verifier should have refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("interpreter: {0}")]
pub struct InterpError(pub String);

#[derive(Clone, Debug)]
enum Slot {
    Tensor(ArrayD<f64>),
    Index(usize),
}

/// Runs `f` on inputs given in the order of its `input_roles`; returns its
/// outputs in the order of `f.outputs`.
pub fn run(f: &Function, inputs: &[ArrayD<f64>]) -> Result<Vec<ArrayD<f64>>, InterpError> {
    let params = &f.block(f.entry).params;
    if inputs.len() != params.len() {
        return Err(InterpError(format!(
            "expected {} inputs, got {}",
            params.len(),
            inputs.len()
        )));
    }
    let mut env: Vec<Option<Slot>> = vec![None; f.values.len()];
    for ((&p, x), role) in params.iter().zip(inputs).zip(&f.input_roles) {
        if x.shape() != f.shape(p) {
            return Err(InterpError(format!(
                "input {role} has shape {:?}, expected {:?}",
                x.shape(),
                f.shape(p)
            )));
        }
        env[p.index()] = Some(Slot::Tensor(x.clone()));
    }
    exec(f, f.entry, &mut env)?;
    f.outputs
        .iter()
        .map(|(_, v)| tensor(&env, *v).cloned())
        .collect()
}

fn tensor(env: &[Option<Slot>], v: Value) -> Result<&ArrayD<f64>, InterpError> {
    match &env[v.index()] {
        Some(Slot::Tensor(t)) => Ok(t),
        _ => Err(InterpError(format!("{v} is not a computed tensor"))),
    }
}

/// Runs a block; returns the operands of its `yield`, if it ends with one.
fn exec(
    f: &Function,
    b: Block,
    env: &mut Vec<Option<Slot>>,
) -> Result<Vec<ArrayD<f64>>, InterpError> {
    for &i in &f.block(b).insts {
        let inst = f.inst(i);
        let arg = |env: &[Option<Slot>], k: usize| tensor(env, inst.args[k]).cloned();
        let out = match &inst.op {
            Op::Yield => {
                return inst.args.iter().map(|&a| tensor(env, a).cloned()).collect();
            }
            Op::Loop { body, steps, .. } => {
                let body_params = f.block(*body).params.clone();
                let mut carried: Vec<ArrayD<f64>> = inst
                    .args
                    .iter()
                    .map(|&a| tensor(env, a).cloned())
                    .collect::<Result<_, _>>()?;
                let n_stacked = inst.results.len() - carried.len();
                let mut stacked: Vec<Vec<ArrayD<f64>>> = vec![Vec::new(); n_stacked];
                for k in 0..*steps {
                    env[body_params[0].index()] = Some(Slot::Index(k));
                    for (p, c) in body_params[1..].iter().zip(&carried) {
                        env[p.index()] = Some(Slot::Tensor(c.clone()));
                    }
                    let mut y = exec(f, *body, env)?;
                    let per_step = y.split_off(carried.len());
                    carried = y;
                    // Groups of one value per stacked result, in time order.
                    for (i, v) in per_step.into_iter().enumerate() {
                        stacked[i % n_stacked].push(v);
                    }
                }
                for (&r, c) in inst.results.iter().zip(carried) {
                    env[r.index()] = Some(Slot::Tensor(c));
                }
                for (&r, s) in inst.results[inst.args.len()..].iter().zip(stacked) {
                    let views: Vec<_> = s.iter().map(|a| a.view()).collect();
                    let t =
                        ndarray::stack(Axis(1), &views).map_err(|e| InterpError(e.to_string()))?;
                    env[r.index()] = Some(Slot::Tensor(t));
                }
                continue;
            }
            Op::LossGrad(kind) => {
                // Targets are dense: sparse class indices arrive one-hot.
                let kind = match kind {
                    Loss::SparseCategoricalCrossentropy => Loss::CategoricalCrossentropy,
                    k => *k,
                };
                let (value, dy) = crate::loss::loss(kind, &arg(env, 0)?, &arg(env, 1)?)
                    .map_err(|e| InterpError(e.to_string()))?;
                env[inst.results[0].index()] =
                    Some(Slot::Tensor(ArrayD::from_elem(IxDyn(&[1]), value)));
                env[inst.results[1].index()] = Some(Slot::Tensor(dy));
                continue;
            }
            Op::Update(kind) => {
                let std = |a: ArrayD<f64>| a.as_standard_layout().into_owned();
                let (mut w, g, mut s1, mut s2) = (
                    std(arg(env, 0)?),
                    std(arg(env, 1)?),
                    std(arg(env, 2)?),
                    std(arg(env, 3)?),
                );
                let rate = arg(env, 4)?.iter().next().copied().unwrap_or(0.0);
                let contiguous = "fresh arrays are contiguous";
                crate::optim::update(
                    *kind,
                    rate,
                    w.as_slice_mut().expect(contiguous),
                    g.as_slice().expect(contiguous),
                    s1.as_slice_mut().expect(contiguous),
                    s2.as_slice_mut().expect(contiguous),
                );
                for (&r, v) in inst.results.iter().zip([w, s1, s2]) {
                    env[r.index()] = Some(Slot::Tensor(v));
                }
                continue;
            }
            Op::Zeros(shape) => ArrayD::zeros(IxDyn(shape)),
            Op::MatMulBT => {
                let w = arg(env, 1)?;
                let wt = w.t().as_standard_layout().into_owned();
                matmul(&arg(env, 0)?, &wt)?
            }
            Op::Transpose => arg(env, 0)?.t().as_standard_layout().into_owned(),
            Op::Pack { transposed } => {
                let w = arg(env, 0)?;
                let w = if *transposed { w.t().to_owned() } else { w };
                let [k, n] = *w.shape() else {
                    return Err(InterpError("pack of a non-matrix".into()));
                };
                let mut p = ArrayD::zeros(IxDyn(&[n.div_ceil(PANEL) * k, PANEL]));
                for ((i, j), &x) in w.indexed_iter().map(|(ix, x)| ((ix[0], ix[1]), x)) {
                    p[[j / PANEL * k + i, j % PANEL]] = x;
                }
                p
            }
            Op::MatMulPacked { cols } => {
                let p = arg(env, 1)?;
                let k = p.shape()[0] / cols.div_ceil(PANEL);
                let w = ArrayD::from_shape_fn(IxDyn(&[k, *cols]), |ix| {
                    p[[ix[1] / PANEL * k + ix[0], ix[1] % PANEL]]
                });
                matmul(&arg(env, 0)?, &w)?
            }
            Op::MatMulAT => {
                let (a, d) = (arg(env, 0)?, arg(env, 1)?);
                let k = *a.shape().last().unwrap_or(&1);
                let n = *d.shape().last().unwrap_or(&1);
                let a2 = a
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((a_rows(&inst.args, f), k))
                    .map_err(|e| InterpError(e.to_string()))?;
                let d2 = d
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((a2.nrows(), n))
                    .map_err(|e| InterpError(e.to_string()))?;
                a2.t().dot(&d2).into_dyn()
            }
            Op::SumRows => {
                let d = arg(env, 0)?;
                let n = *d.shape().last().unwrap_or(&1);
                let rows = d.len() / n.max(1);
                d.as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((rows, n))
                    .map_err(|e| InterpError(e.to_string()))?
                    .sum_axis(Axis(0))
                    .into_dyn()
            }
            Op::ActGrad(a) => {
                // Without `x`, the derivative reads `y` only (it is passed for both).
                let (x, y, dy) = if a.grad_from_output() {
                    (arg(env, 0)?, arg(env, 0)?, arg(env, 1)?)
                } else {
                    (arg(env, 0)?, arg(env, 1)?, arg(env, 2)?)
                };
                let mut out = dy.clone();
                ndarray::Zip::from(&mut out)
                    .and(&x)
                    .and(&y)
                    .for_each(|o, &x, &y| *o *= activate_grad(*a, x, y));
                out
            }
            Op::SoftmaxGrad => {
                let (y, dy) = (arg(env, 0)?, arg(env, 1)?);
                let last = Axis(y.ndim() - 1);
                let dot = (&y * &dy).sum_axis(last).insert_axis(last);
                &y * &(&dy - &dot)
            }
            Op::PadLast { start, total } => {
                let d = arg(env, 0)?;
                let mut shape = d.shape().to_vec();
                let len = *shape.last().unwrap_or(&0);
                *shape.last_mut().expect("padded values have axes") = *total;
                let mut out = ArrayD::zeros(IxDyn(&shape));
                let last = Axis(out.ndim() - 1);
                out.slice_axis_mut(last, (*start..start + len).into())
                    .assign(&d);
                out
            }
            Op::ConcatLast { starts, total } => {
                let mut shape = arg(env, 0)?.shape().to_vec();
                *shape.last_mut().expect("concatenated values have axes") = *total;
                let mut out = ArrayD::zeros(IxDyn(&shape));
                let last = Axis(out.ndim() - 1);
                for (k, &start) in starts.iter().enumerate() {
                    let d = arg(env, k)?;
                    let len = *d.shape().last().unwrap_or(&0);
                    out.slice_axis_mut(last, (start..start + len).into())
                        .assign(&d);
                }
                out
            }
            Op::PadRow { index, rows } => {
                let d = arg(env, 0)?;
                let mut out = ArrayD::zeros(IxDyn(&[*rows, d.len()]));
                out.index_axis_mut(Axis(0), *index).assign(&d);
                out
            }
            Op::PadTime { t, steps } => {
                let d = arg(env, 0)?;
                let (b, feat) = (d.shape()[0], d.shape()[1]);
                let mut out = ArrayD::zeros(IxDyn(&[b, *steps, feat]));
                out.index_axis_mut(Axis(1), *t).assign(&d);
                out
            }
            Op::ReverseTime => {
                let mut s = arg(env, 0)?;
                s.invert_axis(Axis(1));
                s.as_standard_layout().into_owned()
            }
            Op::MatMul => matmul(&arg(env, 0)?, &arg(env, 1)?)?,
            Op::BiasAdd => arg(env, 0)? + &arg(env, 1)?,
            Op::Binary(op) => {
                let (a, b) = (arg(env, 0)?, arg(env, 1)?);
                match op {
                    BinOp::Add => a + &b,
                    BinOp::Sub => a - &b,
                    BinOp::Mul => a * &b,
                }
            }
            Op::Act(a) => arg(env, 0)?.mapv(|x| activate(*a, x)),
            Op::OneMinus => arg(env, 0)?.mapv(|x| 1.0 - x),
            Op::Softmax => softmax(arg(env, 0)?),
            Op::SliceLast { start, len } => {
                let a = arg(env, 0)?;
                let last = Axis(a.ndim() - 1);
                a.slice_axis(last, (*start..start + len).into()).to_owned()
            }
            Op::Row { index } => arg(env, 0)?.index_axis(Axis(0), *index).to_owned(),
            Op::TimeStep {
                reverse,
                stride,
                offset,
            } => {
                let x = arg(env, 0)?;
                let k = match inst.args.get(1).map(|a| &env[a.index()]) {
                    Some(Some(Slot::Index(k))) => *k,
                    None => 0,
                    _ => return Err(InterpError("time_step without a step number".into())),
                };
                let t = x.shape()[1];
                let step = k * stride + offset;
                if step >= t {
                    return Err(InterpError(format!("time step {step} of {t}")));
                }
                let step = if *reverse { t - 1 - step } else { step };
                x.index_axis(Axis(1), step).to_owned()
            }
            Op::Stack => {
                let parts: Vec<ArrayD<f64>> = (0..inst.args.len())
                    .map(|i| arg(env, i))
                    .collect::<Result<_, _>>()?;
                let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
                ndarray::stack(Axis(1), &views).map_err(|e| InterpError(e.to_string()))?
            }
            Op::Fused(kernel) => {
                let ins: Vec<ArrayD<f64>> = (0..inst.args.len())
                    .map(|i| arg(env, i))
                    .collect::<Result<_, _>>()?;
                let outs = fused(kernel, &ins, f.shape(inst.results[0]));
                for (&r, o) in inst.results.iter().zip(outs) {
                    env[r.index()] = Some(Slot::Tensor(o));
                }
                continue;
            }
        };
        let r = inst.results[0];
        if out.shape() != f.shape(r) {
            return Err(InterpError(format!(
                "{i} produced {:?}, IR says {:?}",
                out.shape(),
                f.shape(r)
            )));
        }
        env[r.index()] = Some(Slot::Tensor(out));
    }
    Ok(Vec::new())
}

/// Evaluates an elementwise kernel; broadcast inputs are rows repeated over the leading axes.
fn fused(k: &FusedKernel, ins: &[ArrayD<f64>], shape: &[usize]) -> Vec<ArrayD<f64>> {
    let total: usize = shape.iter().product();
    let n = *shape.last().unwrap_or(&1);
    let flat: Vec<&[f64]> = ins
        .iter()
        .map(|a| a.as_slice().expect("interpreter arrays are contiguous"))
        .collect();
    let mut outs = vec![vec![0.0; total]; k.outputs.len()];
    let mut t = vec![0.0; k.nodes.len()];
    for e in 0..total {
        for (i, node) in k.nodes.iter().enumerate() {
            t[i] = match *node {
                FNode::Input(j) if k.broadcast[j] => flat[j][e % n],
                FNode::Input(j) => flat[j][e],
                FNode::Bin(BinOp::Add, a, b) => t[a] + t[b],
                FNode::Bin(BinOp::Sub, a, b) => t[a] - t[b],
                FNode::Bin(BinOp::Mul, a, b) => t[a] * t[b],
                FNode::Act(act, x) => activate(act, t[x]),
                FNode::OneMinus(x) => 1.0 - t[x],
                FNode::ActGrad(act, x, y, dy) => t[dy] * activate_grad(act, t[x], t[y]),
            };
        }
        for (o, &node) in outs.iter_mut().zip(&k.outputs) {
            o[e] = t[node];
        }
    }
    outs.into_iter()
        .map(|o| ArrayD::from_shape_vec(IxDyn(shape), o).expect("length matches shape"))
        .collect()
}

/// Rows of a matmul operand: the product of its leading axes.
fn a_rows(args: &[crate::ir::Value], f: &Function) -> usize {
    let s = f.shape(args[0]);
    s[..s.len().saturating_sub(1)].iter().product()
}

/// `act'(x)`, given `y = act(x)`, as JAX differentiates Keras 3's formulas.
pub fn activate_grad(a: Activation, x: f64, y: f64) -> f64 {
    match a {
        Activation::Linear | Activation::Softmax => 1.0,
        Activation::Tanh => 1.0 - y * y,
        Activation::Sigmoid => y * (1.0 - y),
        // relu6(x + 3) / 6: slope 1/6 strictly between the breakpoints.
        Activation::HardSigmoid => {
            if x > -3.0 && x < 3.0 {
                1.0 / 6.0
            } else {
                0.0
            }
        }
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// An activation in f64, with Keras 3's formulas.
pub fn activate(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Linear | Activation::Softmax => x,
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::HardSigmoid => (x / 6.0 + 0.5).clamp(0.0, 1.0),
        // Not f64::max, which drops NaN; Keras (jnp.maximum) propagates it.
        Activation::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
    }
}

fn matmul(a: &ArrayD<f64>, w: &ArrayD<f64>) -> Result<ArrayD<f64>, InterpError> {
    let k = *a.shape().last().unwrap_or(&1);
    let lead: Vec<usize> = a.shape()[..a.ndim().saturating_sub(1)].to_vec();
    let m: usize = lead.iter().product();
    let a2: Array2<f64> = a
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((m, k))
        .map_err(|e| InterpError(e.to_string()))?;
    let w2 = w
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|e| InterpError(e.to_string()))?;
    let n = w2.shape()[1];
    let out = a2.dot(&w2);
    let mut shape = lead;
    shape.push(n);
    // ndarray may return an F-order product (when both operands are F-contiguous).
    out.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&shape))
        .map_err(|e| InterpError(e.to_string()))
}

fn softmax(mut a: ArrayD<f64>) -> ArrayD<f64> {
    let last = Axis(a.ndim() - 1);
    for mut lane in a.lanes_mut(last) {
        let m = lane.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
        lane.mapv_inplace(|x| (x - m).exp());
        let s = lane.sum();
        lane.mapv_inplace(|x| x / s);
    }
    a
}
