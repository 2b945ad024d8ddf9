//! Lowering: a checked [`ModelSpec`] → the forward [`Function`] for one batch
//! size and sequence length.
//!
//! Every layer becomes primitive ops. A recurrent layer becomes a [`Op::Loop`]
//! whose body computes each gate separately (`x_t · W_g + h · U_g + b_g`,
//! one matmul per gate and operand), exactly as the formulas of Keras read.
//! Nothing is fused or hoisted here: that is the passes' work, and the
//! interpreter runs this unoptimized form as the reference.

use super::{Block, Function, InputRole, IrError, Op, Origin, OutputRole, Ty, Value};
use crate::ir::BinOp;
use crate::model::{Activation, LayerKind, LayerSpec, ModelSpec};

/// The concrete sizes a function is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shapes {
    /// Batch size.
    pub batch: usize,
    /// Time steps (ignored for a model without a time axis).
    pub time: usize,
}

impl Shapes {
    /// The shape of the model input for these sizes.
    pub fn input_shape(&self, spec: &ModelSpec) -> Vec<usize> {
        if spec.input.sequence {
            vec![self.batch, self.time, spec.input.features]
        } else {
            vec![self.batch, spec.input.features]
        }
    }
}

/// Lowers a model into its forward function, as it predicts (no dropout).
pub fn lower(spec: &ModelSpec, shapes: Shapes) -> Result<Function, IrError> {
    lower_with(spec, shapes, false)
}

/// Lowers a model into its forward function as it trains: a recurrent layer with
/// `dropout` or `recurrent_dropout` multiplies its input, or its previous output before
/// the recurrent products, by masks given as inputs ([`InputRole::Dropout`]), as Keras 3's
/// cells do: one mask for all gates, or with `recurrent_dropout` on an LSTM or GRU
/// (Keras's `implementation=1`) one per gate for each operand. The previous output
/// that a GRU mixes into its new one, and an LSTM's carry, are not masked.
pub fn lower_training(spec: &ModelSpec, shapes: Shapes) -> Result<Function, IrError> {
    lower_with(spec, shapes, true)
}

/// How many dropout masks layer `l` takes in training on its input and on its previous
/// output (see [`lower_training`]).
pub fn dropout_masks(l: &LayerSpec) -> (usize, usize) {
    let on = |rate: f64| 0.0 < rate && rate < 1.0;
    match l.kind {
        LayerKind::Dense => (0, 0),
        LayerKind::SimpleRnn => (
            usize::from(on(l.dropout)),
            usize::from(on(l.recurrent_dropout)),
        ),
        LayerKind::Lstm | LayerKind::Gru if on(l.recurrent_dropout) => (
            if on(l.dropout) { l.kind.gates() } else { 0 },
            l.kind.gates(),
        ),
        LayerKind::Lstm | LayerKind::Gru => (usize::from(on(l.dropout)), 0),
    }
}

fn lower_with(spec: &ModelSpec, shapes: Shapes, training: bool) -> Result<Function, IrError> {
    let mut f = Function::new(spec.name.clone());
    let x = f.add_input(InputRole::X, shapes.input_shape(spec));
    let mut weights = Vec::new();
    for (i, layer) in spec.layers.iter().enumerate() {
        let ws: Vec<Value> = layer
            .weights()
            .into_iter()
            .map(|w| {
                f.add_input(
                    InputRole::Weight {
                        layer: i,
                        name: w.name,
                    },
                    w.shape,
                )
            })
            .collect();
        weights.push(ws);
    }
    let mut states = Vec::new();
    for (i, layer) in spec.layers.iter().enumerate() {
        let s: Vec<Option<Value>> = layer
            .state_names()
            .iter()
            .map(|&slot| {
                layer.stateful.then(|| {
                    f.add_input(
                        InputRole::State { layer: i, slot },
                        vec![shapes.batch, layer.units],
                    )
                })
            })
            .collect();
        states.push(s);
    }
    // Dropout masks: per layer, those on the input, then those on the previous output.
    let mut masks = Vec::new();
    for (i, layer) in spec.layers.iter().enumerate() {
        let (on_x, on_h) = if training {
            dropout_masks(layer)
        } else {
            (0, 0)
        };
        let features = if i == 0 {
            spec.input.features
        } else {
            spec.layers[i - 1].units
        };
        let mut add = |recurrent: bool, count: usize, cols: usize| -> Vec<Value> {
            (0..count)
                .map(|gate| {
                    f.add_input(
                        InputRole::Dropout {
                            layer: i,
                            recurrent,
                            gate,
                        },
                        vec![shapes.batch, cols],
                    )
                })
                .collect()
        };
        let xm = add(false, on_x, features);
        let hm = add(true, on_h, layer.units);
        masks.push((xm, hm));
    }
    let mut cur = x;
    for (i, layer) in spec.layers.iter().enumerate() {
        let mut b = Builder {
            f: &mut f,
            block: Block(0),
            origin: Some(Origin {
                layer: Some(i),
                span: layer.span,
            }),
        };
        let w = &weights[i];
        cur = match layer.kind {
            LayerKind::Dense => b.dense(layer, cur, w)?,
            _ => {
                let (out, finals) = b.recurrent(layer, cur, w, &states[i], &masks[i], shapes)?;
                for (slot, v) in layer.state_names().iter().zip(finals) {
                    f.outputs.push((OutputRole::State { layer: i, slot }, v));
                }
                out
            }
        };
    }
    f.outputs.insert(0, (OutputRole::Y, cur));
    Ok(f)
}

/// Appends instructions to one block, all with the same origin.
struct Builder<'a> {
    f: &'a mut Function,
    block: Block,
    origin: Option<Origin>,
}

impl Builder<'_> {
    fn op(&mut self, op: Op, args: &[Value]) -> Result<Value, IrError> {
        self.f
            .push(self.block, op, args, self.origin)?
            .ok_or_else(|| IrError("op without result".into()))
    }
    fn matmul(&mut self, a: Value, w: Value) -> Result<Value, IrError> {
        self.op(Op::MatMul, &[a, w])
    }
    fn add(&mut self, a: Value, b: Value) -> Result<Value, IrError> {
        self.op(Op::Binary(BinOp::Add), &[a, b])
    }
    fn mul(&mut self, a: Value, b: Value) -> Result<Value, IrError> {
        self.op(Op::Binary(BinOp::Mul), &[a, b])
    }
    fn act(&mut self, a: Activation, x: Value) -> Result<Value, IrError> {
        match a {
            Activation::Linear => Ok(x),
            Activation::Softmax => self.op(Op::Softmax, &[x]),
            a => self.op(Op::Act(a), &[x]),
        }
    }
    fn bias(&mut self, a: Value, b: Option<Value>) -> Result<Value, IrError> {
        match b {
            Some(b) => self.op(Op::BiasAdd, &[a, b]),
            None => Ok(a),
        }
    }
    fn slice(&mut self, a: Value, gate: usize, units: usize) -> Result<Value, IrError> {
        self.op(
            Op::SliceLast {
                start: gate * units,
                len: units,
            },
            &[a],
        )
    }

    /// `v` for each of `gates` gates: as is without masks, times the one mask shared by
    /// every gate (one product), or times each gate's own.
    fn masked(&mut self, v: Value, masks: &[Value], gates: usize) -> Result<Vec<Value>, IrError> {
        match masks {
            [] => Ok(vec![v; gates]),
            [m] => Ok(vec![self.mul(v, *m)?; gates]),
            ms => ms.iter().map(|&m| self.mul(v, m)).collect(),
        }
    }

    fn dense(&mut self, l: &LayerSpec, x: Value, w: &[Value]) -> Result<Value, IrError> {
        let y = self.matmul(x, w[0])?;
        let y = self.bias(y, w.get(1).copied())?;
        self.act(l.activation, y)
    }

    /// Returns the layer's output and its final states.
    fn recurrent(
        &mut self,
        l: &LayerSpec,
        x: Value,
        w: &[Value],
        init: &[Option<Value>],
        (x_masks, h_masks): &(Vec<Value>, Vec<Value>),
        shapes: Shapes,
    ) -> Result<(Value, Vec<Value>), IrError> {
        let u = l.units;
        let gates = l.kind.gates();
        let (kernel, recurrent) = (w[0], w[1]);
        let bias = w.get(2).copied();
        // Per-gate weight slices, outside the loop: they do not change per step.
        let mut wk = Vec::new();
        let mut wr = Vec::new();
        let mut bx = Vec::new();
        let mut bh = Vec::new();
        let gru_two_biases = l.kind == LayerKind::Gru && l.reset_after;
        let (bias_x, bias_h) = match bias {
            Some(b) if gru_two_biases => (
                Some(self.op(Op::Row { index: 0 }, &[b])?),
                Some(self.op(Op::Row { index: 1 }, &[b])?),
            ),
            b => (b, None),
        };
        for g in 0..gates {
            wk.push(self.slice(kernel, g, u)?);
            wr.push(self.slice(recurrent, g, u)?);
            bx.push(bias_x.map(|b| self.slice(b, g, u)).transpose()?);
            bh.push(bias_h.map(|b| self.slice(b, g, u)).transpose()?);
        }
        let mut carried_init = Vec::new();
        for s in init {
            carried_init.push(match s {
                Some(v) => *v,
                None => self.op(Op::Zeros(vec![shapes.batch, u]), &[])?,
            });
        }
        // The loop body.
        let body = self.f.new_block();
        let k = self.f.add_param(body, Ty::Index);
        let carried: Vec<Value> = carried_init
            .iter()
            .map(|_| self.f.add_param(body, Ty::Tensor(vec![shapes.batch, u])))
            .collect();
        let outer = self.block;
        self.block = body;
        let xt = self.op(
            Op::TimeStep {
                reverse: l.go_backwards,
                stride: 1,
                offset: 0,
            },
            &[x, k],
        )?;
        let h = carried[0];
        // Each gate's operands: the input and previous output, masked in training (one
        // mask shared by every gate, or one per gate).
        let xg = self.masked(xt, x_masks, gates)?;
        let hg = self.masked(h, h_masks, gates)?;
        let (ra, act) = (l.recurrent_activation, l.activation);
        let next: Vec<Value> = match l.kind {
            LayerKind::Lstm => {
                let c = carried[1];
                let mut z = Vec::new();
                for g in 0..4 {
                    let a = self.matmul(xg[g], wk[g])?;
                    let r = self.matmul(hg[g], wr[g])?;
                    let s = self.add(a, r)?;
                    z.push(self.bias(s, bx[g])?);
                }
                let i = self.act(ra, z[0])?;
                let fg = self.act(ra, z[1])?;
                let cand = self.act(act, z[2])?;
                let o = self.act(ra, z[3])?;
                let fc = self.mul(fg, c)?;
                let ic = self.mul(i, cand)?;
                let c2 = self.add(fc, ic)?;
                let ac = self.act(act, c2)?;
                let h2 = self.mul(o, ac)?;
                vec![h2, c2]
            }
            LayerKind::Gru => {
                let mut xm = Vec::new();
                for g in 0..3 {
                    let a = self.matmul(xg[g], wk[g])?;
                    xm.push(self.bias(a, bx[g])?);
                }
                let zr: Vec<Value> = if l.reset_after {
                    let mut pre = Vec::new();
                    let mut hm = Vec::new();
                    for g in 0..3 {
                        let r = self.matmul(hg[g], wr[g])?;
                        hm.push(self.bias(r, bh[g])?);
                    }
                    for g in 0..2 {
                        let s = self.add(xm[g], hm[g])?;
                        pre.push(self.act(ra, s)?);
                    }
                    let rh = self.mul(pre[1], hm[2])?;
                    let s = self.add(xm[2], rh)?;
                    pre.push(self.act(act, s)?);
                    pre
                } else {
                    let mut pre = Vec::new();
                    for g in 0..2 {
                        let r = self.matmul(hg[g], wr[g])?;
                        let s = self.add(xm[g], r)?;
                        pre.push(self.act(ra, s)?);
                    }
                    let rh = self.mul(pre[1], hg[2])?;
                    let r = self.matmul(rh, wr[2])?;
                    let s = self.add(xm[2], r)?;
                    pre.push(self.act(act, s)?);
                    pre
                };
                let (z, hh) = (zr[0], zr[2]);
                let zh = self.mul(z, h)?;
                let omz = self.op(Op::OneMinus, &[z])?;
                let n = self.mul(omz, hh)?;
                vec![self.add(zh, n)?]
            }
            LayerKind::SimpleRnn => {
                let a = self.matmul(xg[0], wk[0])?;
                let r = self.matmul(hg[0], wr[0])?;
                let s = self.add(a, r)?;
                let s = self.bias(s, bx[0])?;
                vec![self.act(act, s)?]
            }
            LayerKind::Dense => return Err(IrError("Dense is not recurrent".into())),
        };
        let mut yielded = next.clone();
        if l.return_sequences {
            yielded.push(next[0]);
        }
        self.f
            .push_typed(body, Op::Yield, yielded, vec![], self.origin);
        self.block = outer;
        let mut tys: Vec<Ty> = carried.iter().map(|&c| self.f.ty(c).clone()).collect();
        if l.return_sequences {
            tys.push(Ty::Tensor(vec![shapes.batch, shapes.time, u]));
        }
        let inst = self.f.push_typed(
            outer,
            Op::Loop {
                body,
                steps: shapes.time,
                per_iter: 1,
            },
            carried_init,
            tys,
            self.origin,
        );
        let results = self.f.inst(inst).results.clone();
        let finals = results[..carried.len()].to_vec();
        let out = if l.return_sequences {
            results[carried.len()]
        } else {
            finals[0]
        };
        Ok((out, finals))
    }
}
