//! The IR: a graph of tensor operations with static shapes.
//!
//! Values, instructions and blocks live in arenas of the [`Function`] and are
//! named by typed ids ([`Value`], [`Inst`], [`Block`]) rather than references,
//! so that passes can rewrite the graph freely and side tables can be indexed
//! by id (as Cranelift's entities). The op set is closed ([`Op`]); every op's
//! typing rule is in [`infer`], which both the builder and the verifier use.
//!
//! Recurrence is explicit: [`Op::Loop`] runs a body block `steps` times; the
//! body receives the step number `k` and the carried values, and ends with
//! [`Op::Yield`] of the next carried values followed by per-step values that
//! the loop stacks along a new time axis (axis 1). A layer is lowered to
//! primitive ops inside such a loop, so passes can fuse, hoist and unroll.

pub mod lower;
pub mod print;
pub mod verify;

use crate::front::Span;
use crate::model::{Activation, Loss, Optimizer};
use std::fmt;

/// Columns per panel of a packed weight ([`Op::Pack`]): three vectors of 8 lanes, the
/// width of the host kernel that multiplies by it (`jit::native::packed`).
pub(crate) const PANEL: usize = 24;

macro_rules! entity {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl $name {
            /// The arena index.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

entity!(
    Value,
    "%",
    "An SSA value: a tensor, or a step number inside a loop body."
);
entity!(Inst, "inst", "An instruction.");
entity!(
    Block,
    "^bb",
    "A block: parameters and a list of instructions."
);

/// The type of a value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    /// A float tensor of a static shape (row-major).
    Tensor(Vec<usize>),
    /// A step number of a loop.
    Index,
}

impl Ty {
    /// The shape, for a tensor.
    pub fn shape(&self) -> Option<&[usize]> {
        match self {
            Ty::Tensor(s) => Some(s),
            Ty::Index => None,
        }
    }

    /// The number of elements (1 for an index).
    pub fn numel(&self) -> usize {
        self.shape().map_or(1, |s| s.iter().product())
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Tensor(s) => {
                let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
                write!(f, "f32[{}]", dims.join(","))
            }
            Ty::Index => f.write_str("index"),
        }
    }
}

/// Elementwise binary operations on tensors of one shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
}

/// The operations. Each variant's doc gives its typing rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `() -> T`: a tensor of zeros of the result type (given to the builder).
    Zeros(Vec<usize>),
    /// `(a: [.., K], w: [K, N]) -> [.., N]`: matrix product on the last axis.
    MatMul,
    /// `(a: [.., N], b: [N]) -> [.., N]`: adds `b` to every row.
    BiasAdd,
    /// `(a: T, b: T) -> T`: elementwise.
    Binary(BinOp),
    /// `(a: T) -> T`: an elementwise activation (not softmax).
    Act(Activation),
    /// `(a: T) -> T`: `1 - a`.
    OneMinus,
    /// `(a: [.., N]) -> [.., N]`: softmax over the last axis.
    Softmax,
    /// `(a: [.., N]) -> [.., len]`: columns `start..start+len` of the last axis.
    SliceLast {
        /// first column
        start: usize,
        /// number of columns
        len: usize,
    },
    /// `(a: [R, N]) -> [N]`: row `index`.
    Row {
        /// the row
        index: usize,
    },
    /// `(x: [B, T, F], k: index) -> [B, F]` or `(x: [B, T, F]) -> [B, F]`:
    /// step `t = k·stride + offset` of a sequence (`t = offset` without `k`),
    /// or step `T-1-t` when `reverse` (a `go_backwards` layer).
    TimeStep {
        /// read from the end
        reverse: bool,
        /// steps per `k`
        stride: usize,
        /// added to `k·stride`
        offset: usize,
    },
    /// `(v_0..v_{n-1}: [B, ..]) -> [B, n, ..]`: per-step values stacked in order.
    Stack,
    /// `(inputs...) -> (outputs...)`: an elementwise kernel (see [`FusedKernel`]).
    Fused(FusedKernel),
    /// `(init: C...) -> (C..., S...)`: runs `body` for `k = 0..steps`. The body
    /// has parameters `(k: index, carried: C...)` and ends with a `Yield` of
    /// `(C..., s...)`: `per_iter` groups of one per-step value `[B, ..]` per
    /// stacked result. Group `j` of iteration `k` is time `k·per_iter + j` of
    /// each stacked result `S = [B, steps·per_iter, ..]`.
    Loop {
        /// the body block
        body: Block,
        /// trip count
        steps: usize,
        /// per-step values yielded per iteration, per stacked result (1 unless unrolled)
        per_iter: usize,
    },
    /// `(C..., S'...) -> ()`: ends a loop body (see `Loop`).
    Yield,
    /// `(d: [.., N], w: [K, N]) -> [.., K]`: `d · wᵀ` (gradient of a matmul's operand).
    MatMulBT,
    /// `(w: [K, N]) -> [N, K]`: the transpose of a matrix (a weight that a loop reads
    /// transposed at every step, transposed once before it: see `passes::transpose`).
    Transpose,
    /// `(w: [K, N]) -> [⌈N/PANEL⌉·K, PANEL]`: the columns of `w` in panels of `PANEL` (24),
    /// panel `p`'s `K` rows of `PANEL` columns after panel `p - 1`'s, the last one padded
    /// with zeros; `(w: [N, K]) -> ..` the same of `wᵀ` when `transposed`. A weight that a
    /// loop multiplies by at every step, packed once before it (see `passes::pack`).
    Pack {
        /// pack `wᵀ`
        transposed: bool,
    },
    /// `(a: [.., K], p: [⌈N/PANEL⌉·K, PANEL]) -> [.., N]`: `a · w` for the `w` that `p`
    /// packs ([`Op::Pack`]).
    MatMulPacked {
        /// columns of the result (of `w`)
        cols: usize,
    },
    /// `(a: [.., K], d: [.., N]) -> [K, N]`: `aᵀ · d` over all leading axes (gradient of a weight).
    MatMulAT,
    /// `(d: [.., N]) -> [N]`: sum over the leading axes (gradient of a bias).
    SumRows,
    /// `(x: T, y: T, dy: T) -> T`: `dy · act'(x)` with `y = act(x)`; `(y: T, dy: T) -> T`
    /// for an activation whose derivative is a function of `y`
    /// ([`Activation::grad_from_output`]).
    ActGrad(Activation),
    /// `(y: [.., N], dy: [.., N]) -> [.., N]`: `y · (dy - sum(dy · y))` over the last axis.
    SoftmaxGrad,
    /// `(d: [.., len]) -> [.., total]`: `d` at columns `start..start+len`, zeros elsewhere.
    PadLast {
        /// first column
        start: usize,
        /// width of the result
        total: usize,
    },
    /// `(d_0: [.., l_0], d_1: [.., l_1], ..) -> [.., total]`: each `d_i` at columns
    /// `starts[i]..starts[i] + l_i`, zeros elsewhere; the ranges do not overlap. A sum
    /// of `pad_last`s (the adjoint of a value split into gates), built in one pass.
    ConcatLast {
        /// first column of each operand
        starts: Vec<usize>,
        /// width of the result
        total: usize,
    },
    /// `(d: [N]) -> [rows, N]`: `d` as row `index`, zeros elsewhere.
    PadRow {
        /// the row
        index: usize,
        /// rows of the result
        rows: usize,
    },
    /// `(d: [B, F]) -> [B, steps, F]`: `d` at time `t`, zeros elsewhere.
    PadTime {
        /// the step
        t: usize,
        /// steps of the result
        steps: usize,
    },
    /// `(s: [B, T, ..]) -> [B, T, ..]`: the time axis reversed.
    ReverseTime,
    /// `(y: [.., N], t: [.., N]) -> ([1], [.., N])`: the loss of the prediction `y`
    /// against dense targets `t` (Keras's reduction), and its gradient with respect to `y`.
    LossGrad(Loss),
    /// `(w: W, g: W, s1: W, s2: W, hyper: [1]) -> (W, W, W)`: one optimizer step of a
    /// weight by its gradient, with its two slots; `hyper[0]` is the step's learning
    /// rate (Adam's bias-corrected one). The results replace `w`, `s1` and `s2`, which
    /// nothing may read afterwards: code generation updates them in place.
    Update(Optimizer),
}

impl Op {
    /// The mnemonic used in the textual IR.
    pub fn mnemonic(&self) -> String {
        match self {
            Op::Zeros(_) => "zeros".into(),
            Op::MatMul => "matmul".into(),
            Op::BiasAdd => "bias_add".into(),
            Op::Binary(BinOp::Add) => "add".into(),
            Op::Binary(BinOp::Sub) => "sub".into(),
            Op::Binary(BinOp::Mul) => "mul".into(),
            Op::Act(a) => a.name().into(),
            Op::OneMinus => "one_minus".into(),
            Op::Softmax => "softmax".into(),
            Op::SliceLast { start, len } => format!("slice_last[{start}..{}]", start + len),
            Op::Row { index } => format!("row[{index}]"),
            Op::TimeStep {
                reverse,
                stride,
                offset,
            } => {
                let r = if *reverse { ".reverse" } else { "" };
                match (*stride, *offset) {
                    (1, 0) => format!("time_step{r}[k]"),
                    (0, o) => format!("time_step{r}[{o}]"),
                    (1, o) => format!("time_step{r}[k+{o}]"),
                    (s, 0) => format!("time_step{r}[{s}k]"),
                    (s, o) => format!("time_step{r}[{s}k+{o}]"),
                }
            }
            Op::Stack => "stack".into(),
            Op::Fused(k) => format!("fused {k}"),
            Op::Loop {
                steps, per_iter: 1, ..
            } => format!("loop[{steps}]"),
            Op::Loop {
                steps, per_iter, ..
            } => format!("loop[{steps}x{per_iter}]"),
            Op::Yield => "yield".into(),
            Op::MatMulBT => "matmul_bt".into(),
            Op::Transpose => "transpose".into(),
            Op::Pack { transposed: false } => "pack".into(),
            Op::Pack { transposed: true } => "pack.transposed".into(),
            Op::MatMulPacked { cols } => format!("matmul_packed[{cols}]"),
            Op::MatMulAT => "matmul_at".into(),
            Op::SumRows => "sum_rows".into(),
            Op::ActGrad(a) => format!("{}_grad", a.name()),
            Op::SoftmaxGrad => "softmax_grad".into(),
            Op::PadLast { start, total } => format!("pad_last[{start}; {total}]"),
            Op::ConcatLast { starts, total } => {
                let s: Vec<String> = starts.iter().map(|s| s.to_string()).collect();
                format!("concat_last[{}; {total}]", s.join(", "))
            }
            Op::PadRow { index, rows } => format!("pad_row[{index}; {rows}]"),
            Op::PadTime { t, steps } => format!("pad_time[{t}; {steps}]"),
            Op::ReverseTime => "reverse_time".into(),
            Op::LossGrad(l) => format!("loss_grad[{}]", l.name()),
            Op::Update(o) => format!("update[{}]", o.describe()),
        }
    }
}

/// An elementwise kernel: a small expression DAG over inputs of one shape
/// `[.., N]` (or `[N]`, broadcast over rows), evaluated once per element.
/// Produced by the `fuse-elementwise` pass; code generation emits one loop for it.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedKernel {
    /// Per input: whether it is a row `[N]` broadcast over the leading axes.
    pub broadcast: Vec<bool>,
    /// The expression nodes, in evaluation order (operands precede users).
    pub nodes: Vec<FNode>,
    /// The node each result is.
    pub outputs: Vec<usize>,
}

/// A node of a [`FusedKernel`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FNode {
    /// Input `i`.
    Input(usize),
    /// `a op b`.
    Bin(BinOp, usize, usize),
    /// An activation.
    Act(Activation, usize),
    /// `1 - a`.
    OneMinus(usize),
    /// `dy · act'(x)` from `x`, the activation's output `y` and `dy` (as [`Op::ActGrad`];
    /// an activation whose derivative reads only `y` has `x == y`).
    ActGrad(Activation, usize, usize, usize),
}

impl fmt::Display for FusedKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let s = match *n {
                FNode::Input(k) if self.broadcast[k] => format!("in{k}[row]"),
                FNode::Input(k) => format!("in{k}"),
                FNode::Bin(op, a, b) => {
                    let o = match op {
                        BinOp::Add => "+",
                        BinOp::Sub => "-",
                        BinOp::Mul => "*",
                    };
                    format!("t{a} {o} t{b}")
                }
                FNode::Act(a, x) => format!("{}(t{x})", a.name()),
                FNode::OneMinus(x) => format!("1 - t{x}"),
                FNode::ActGrad(a, x, y, dy) if a.grad_from_output() => {
                    debug_assert_eq!(x, y);
                    format!("{}_grad(t{y}, t{dy})", a.name())
                }
                FNode::ActGrad(a, x, y, dy) => format!("{}_grad(t{x}, t{y}, t{dy})", a.name()),
            };
            parts.push(format!("t{i} = {s}"));
        }
        let outs: Vec<String> = self.outputs.iter().map(|o| format!("t{o}")).collect();
        write!(f, "{{ {}; out {} }}", parts.join("; "), outs.join(", "))
    }
}

/// Where a value or instruction came from in the `.model` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The layer (0-based), if any.
    pub layer: Option<usize>,
    /// The source span.
    pub span: Span,
}

/// How a value is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueDef {
    /// The `index`-th parameter of a block.
    Param(Block, usize),
    /// The `index`-th result of an instruction.
    Result(Inst, usize),
}

/// A value's type and definition.
#[derive(Clone, Debug)]
pub struct ValueData {
    /// Its type.
    pub ty: Ty,
    /// Where it is defined.
    pub def: ValueDef,
}

/// An instruction.
#[derive(Clone, Debug)]
pub struct InstData {
    /// The operation.
    pub op: Op,
    /// Operands.
    pub args: Vec<Value>,
    /// Results.
    pub results: Vec<Value>,
    /// Source location.
    pub origin: Option<Origin>,
}

/// A block.
#[derive(Clone, Debug, Default)]
pub struct BlockData {
    /// Parameters (function inputs for the entry block; `k` and carried values for a loop body).
    pub params: Vec<Value>,
    /// Instructions in order.
    pub insts: Vec<Inst>,
}

/// What a function input is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputRole {
    /// The model input `x`.
    X,
    /// A weight: `layers.{layer}.{name}`.
    Weight {
        /// layer index
        layer: usize,
        /// `kernel`, `recurrent_kernel`, `bias`
        name: &'static str,
    },
    /// The initial recurrent state of a stateful layer.
    State {
        /// layer index
        layer: usize,
        /// `h` or `c`
        slot: &'static str,
    },
    /// The gradient of the loss with respect to the output `y` (backward functions).
    DY,
    /// The training targets, shaped like `y` (train-step functions).
    Target,
    /// An optimizer slot of a weight (train-step functions): 0 is momentum, Adam's `m`
    /// or RMSprop's velocity, 1 is Adam's `v` or RMSprop's momentum.
    Slot {
        /// layer index
        layer: usize,
        /// the weight
        name: &'static str,
        /// 0 or 1
        index: usize,
    },
    /// The step's learning rate, `[1]` (train-step functions).
    Hyper,
    /// A dropout mask of a recurrent layer in training ([`crate::ir::lower::lower_training`]):
    /// `[batch, features]` on the layer's input, or `[batch, units]` on its previous output
    /// (`recurrent`), each element 0 or `1 / (1 - rate)`, one per batch for all its steps;
    /// `gate` counts the gates when each has its own (Keras's `implementation=1`).
    Dropout {
        /// layer index
        layer: usize,
        /// on the previous output (`recurrent_dropout`), else on the input (`dropout`)
        recurrent: bool,
        /// the gate it masks the operand of, or 0 for a mask shared by every gate
        gate: usize,
    },
}

/// What a function output is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputRole {
    /// The model output `y`.
    Y,
    /// The final recurrent state of a layer (every recurrent layer has it).
    State {
        /// layer index
        layer: usize,
        /// `h` or `c`
        slot: &'static str,
    },
    /// The gradient of the loss with respect to a function input (backward functions).
    Grad(GradRole),
    /// The loss of the batch, `[1]` (train-step functions).
    Loss,
    /// The new value of an input (a weight or a slot) after an optimizer step, written
    /// in place of that input (train-step functions).
    Updated(InputRole),
}

impl fmt::Display for GradRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grad {}", self.0)
    }
}

/// The gradient of the loss with respect to a function input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GradRole(pub InputRole);

impl fmt::Display for InputRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputRole::X => f.write_str("x"),
            InputRole::Weight { layer, name } => write!(f, "layers.{layer}.{name}"),
            InputRole::State { layer, slot } => write!(f, "state layers.{layer}.{slot}"),
            InputRole::DY => f.write_str("dy"),
            InputRole::Target => f.write_str("target"),
            InputRole::Slot { layer, name, index } => {
                write!(f, "slot{index} layers.{layer}.{name}")
            }
            InputRole::Hyper => f.write_str("learning_rate"),
            InputRole::Dropout {
                layer,
                recurrent,
                gate,
            } => {
                let on = if *recurrent { "h" } else { "x" };
                write!(f, "dropout layers.{layer}.{on}[{gate}]")
            }
        }
    }
}

impl fmt::Display for OutputRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputRole::Y => f.write_str("y"),
            OutputRole::State { layer, slot } => write!(f, "state layers.{layer}.{slot}"),
            OutputRole::Grad(g) => write!(f, "{g}"),
            OutputRole::Loss => f.write_str("loss"),
            OutputRole::Updated(r) => write!(f, "updated {r}"),
        }
    }
}

/// A function: the forward computation of a model for one batch size.
#[derive(Clone, Debug)]
pub struct Function {
    /// Its name (the model's).
    pub name: String,
    /// The value arena.
    pub values: Vec<ValueData>,
    /// The instruction arena.
    pub insts: Vec<InstData>,
    /// The block arena.
    pub blocks: Vec<BlockData>,
    /// The entry block; its parameters are the inputs, in `input_roles` order.
    pub entry: Block,
    /// What each entry parameter is.
    pub input_roles: Vec<InputRole>,
    /// The outputs.
    pub outputs: Vec<(OutputRole, Value)>,
}

/// An ill-typed operation, found by the builder or the verifier.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IrError(pub String);

/// The result types of `op` applied to arguments of types `args`.
///
/// Loops are typed by [`verify`], which can see their bodies; here a loop's
/// result types must be supplied by the builder.
pub fn infer(op: &Op, args: &[&Ty]) -> Result<Vec<Ty>, IrError> {
    let err = |m: String| Err(IrError(format!("{}: {m}", op.mnemonic())));
    let tensor = |i: usize| -> Result<&[usize], IrError> {
        match args.get(i) {
            Some(Ty::Tensor(s)) => Ok(s),
            Some(Ty::Index) => Err(IrError(format!(
                "{}: operand {i} is an index, not a tensor",
                op.mnemonic()
            ))),
            None => Err(IrError(format!("{}: missing operand {i}", op.mnemonic()))),
        }
    };
    let arity = |n: usize| -> Result<(), IrError> {
        if args.len() == n {
            Ok(())
        } else {
            Err(IrError(format!(
                "{}: expected {n} operands, found {}",
                op.mnemonic(),
                args.len()
            )))
        }
    };
    match op {
        Op::Zeros(shape) => {
            arity(0)?;
            Ok(vec![Ty::Tensor(shape.clone())])
        }
        Op::MatMul => {
            arity(2)?;
            let (a, w) = (tensor(0)?, tensor(1)?);
            match (a.split_last(), w) {
                (Some((&k, lead)), &[k2, n]) if k == k2 => {
                    Ok(vec![Ty::Tensor([lead, &[n]].concat())])
                }
                _ => err(format!("cannot multiply {:?} by {:?}", a, w)),
            }
        }
        Op::BiasAdd => {
            arity(2)?;
            let (a, b) = (tensor(0)?, tensor(1)?);
            match (a.last(), b) {
                (Some(&n), &[m]) if n == m => Ok(vec![Ty::Tensor(a.to_vec())]),
                _ => err(format!("bias {:?} does not match {:?}", b, a)),
            }
        }
        Op::Binary(_) => {
            arity(2)?;
            let (a, b) = (tensor(0)?, tensor(1)?);
            if a == b {
                Ok(vec![Ty::Tensor(a.to_vec())])
            } else {
                err(format!("shapes differ: {:?} and {:?}", a, b))
            }
        }
        Op::Act(Activation::Softmax) => err("softmax is its own op".into()),
        Op::Act(_) | Op::OneMinus | Op::Softmax => {
            arity(1)?;
            let a = tensor(0)?;
            if matches!(op, Op::Softmax) && a.is_empty() {
                return err("softmax of a scalar".into());
            }
            Ok(vec![Ty::Tensor(a.to_vec())])
        }
        Op::SliceLast { start, len } => {
            arity(1)?;
            let a = tensor(0)?;
            match a.split_last() {
                Some((&n, lead)) if start + len <= n && *len > 0 => {
                    Ok(vec![Ty::Tensor([lead, &[*len]].concat())])
                }
                _ => err(format!("columns {start}..{} out of {:?}", start + len, a)),
            }
        }
        Op::Row { index } => {
            arity(1)?;
            match tensor(0)? {
                &[r, n] if *index < r => Ok(vec![Ty::Tensor(vec![n])]),
                a => err(format!("row {index} of {:?}", a)),
            }
        }
        Op::TimeStep { stride, offset, .. } => {
            let x = tensor(0)?;
            match args.len() {
                1 if *stride == 0 => {}
                2 if args[1] == &Ty::Index => {}
                _ => {
                    return err(
                        "expects (sequence, index), or a sequence alone with stride 0".into(),
                    )
                }
            }
            match x {
                &[b, t, f] if args.len() == 2 || *offset < t => Ok(vec![Ty::Tensor(vec![b, f])]),
                _ => err(format!(
                    "expects a sequence [B, T, F] with step {offset} in range, found {:?}",
                    x
                )),
            }
        }
        Op::Stack => {
            let first = tensor(0)?;
            for i in 1..args.len() {
                if tensor(i)? != first {
                    return err("stacked values differ in shape".into());
                }
            }
            match first.split_first() {
                Some((&b, rest)) => Ok(vec![Ty::Tensor([&[b, args.len()][..], rest].concat())]),
                None => err("stacked values need a batch axis".into()),
            }
        }
        Op::Fused(k) => {
            if k.broadcast.len() != args.len() {
                return err(format!(
                    "kernel takes {} inputs, given {}",
                    k.broadcast.len(),
                    args.len()
                ));
            }
            let full = (0..args.len())
                .find(|&i| !k.broadcast[i])
                .ok_or_else(|| IrError("fused: no full-shape input".into()))?;
            let shape = tensor(full)?;
            let n = *shape.last().unwrap_or(&1);
            for i in 0..args.len() {
                let s = tensor(i)?;
                let ok = if k.broadcast[i] { s == [n] } else { s == shape };
                if !ok {
                    return err(format!("input {i} is {:?}, kernel shape {:?}", s, shape));
                }
            }
            for (idx, node) in k.nodes.iter().enumerate() {
                let ok = match *node {
                    FNode::Input(i) => i < args.len(),
                    FNode::Bin(_, a, b) => a < idx && b < idx,
                    FNode::Act(a, x) => x < idx && a != Activation::Softmax,
                    FNode::OneMinus(x) => x < idx,
                    FNode::ActGrad(a, x, y, dy) => {
                        x < idx
                            && y < idx
                            && dy < idx
                            && a != Activation::Softmax
                            && (x == y || !a.grad_from_output())
                    }
                };
                if !ok {
                    return err(format!("node {idx} is malformed"));
                }
            }
            if k.outputs.iter().any(|&o| o >= k.nodes.len()) || k.outputs.is_empty() {
                return err("outputs name missing nodes".into());
            }
            Ok(vec![Ty::Tensor(shape.to_vec()); k.outputs.len()])
        }
        Op::Loop { .. } => err("loop result types come from its body".into()),
        Op::Yield => Ok(vec![]),
        Op::MatMulBT => {
            arity(2)?;
            let (d, w) = (tensor(0)?, tensor(1)?);
            match (d.split_last(), w) {
                (Some((&n, lead)), &[k, n2]) if n == n2 => {
                    Ok(vec![Ty::Tensor([lead, &[k]].concat())])
                }
                _ => err(format!(
                    "cannot multiply {:?} by the transpose of {:?}",
                    d, w
                )),
            }
        }
        Op::Transpose => {
            arity(1)?;
            match tensor(0)? {
                &[k, n] => Ok(vec![Ty::Tensor(vec![n, k])]),
                w => err(format!("cannot transpose {w:?}: not a matrix")),
            }
        }
        Op::Pack { transposed } => {
            arity(1)?;
            match (tensor(0)?, transposed) {
                (&[k, n], false) | (&[n, k], true) => {
                    Ok(vec![Ty::Tensor(vec![n.div_ceil(PANEL) * k, PANEL])])
                }
                (w, _) => err(format!("cannot pack {w:?}: not a matrix")),
            }
        }
        Op::MatMulPacked { cols } => {
            arity(2)?;
            let (a, p) = (tensor(0)?, tensor(1)?);
            match (a.split_last(), p) {
                (Some((&k, lead)), &[rows, PANEL]) if rows == cols.div_ceil(PANEL) * k => {
                    Ok(vec![Ty::Tensor([lead, &[*cols]].concat())])
                }
                _ => err(format!(
                    "cannot multiply {a:?} by {p:?} packed from {cols} columns"
                )),
            }
        }
        Op::MatMulAT => {
            arity(2)?;
            let (a, d) = (tensor(0)?, tensor(1)?);
            match (a.split_last(), d.split_last()) {
                (Some((&k, la)), Some((&n, ld))) if la == ld => Ok(vec![Ty::Tensor(vec![k, n])]),
                _ => err(format!("leading axes differ: {:?} and {:?}", a, d)),
            }
        }
        Op::SumRows => {
            arity(1)?;
            match tensor(0)?.last() {
                Some(&n) => Ok(vec![Ty::Tensor(vec![n])]),
                None => err("sum of a scalar".into()),
            }
        }
        Op::ActGrad(a) => {
            let n = if a.grad_from_output() { 2 } else { 3 };
            arity(n)?;
            let x = tensor(0)?;
            if (1..n).any(|i| !tensor(i).is_ok_and(|t| t == x)) {
                return err("operands differ in shape".into());
            }
            Ok(vec![Ty::Tensor(x.to_vec())])
        }
        Op::SoftmaxGrad => {
            arity(2)?;
            let y = tensor(0)?;
            if tensor(1)? != y || y.is_empty() {
                return err("operands differ in shape".into());
            }
            Ok(vec![Ty::Tensor(y.to_vec())])
        }
        Op::PadLast { start, total } => {
            arity(1)?;
            match tensor(0)?.split_last() {
                Some((&len, lead)) if start + len <= *total => {
                    Ok(vec![Ty::Tensor([lead, &[*total]].concat())])
                }
                _ => err("slice does not fit".into()),
            }
        }
        Op::ConcatLast { starts, total } => {
            arity(starts.len())?;
            let lead = match tensor(0)?.split_last() {
                Some((_, lead)) => lead.to_vec(),
                None => return err("operands need an axis".into()),
            };
            let mut ranges = Vec::with_capacity(starts.len());
            for (i, &start) in starts.iter().enumerate() {
                match tensor(i)?.split_last() {
                    Some((&len, l)) if l == lead.as_slice() && start + len <= *total => {
                        ranges.push((start, start + len));
                    }
                    _ => return err(format!("operand {i} does not fit")),
                }
            }
            ranges.sort();
            if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
                return err("operands overlap".into());
            }
            Ok(vec![Ty::Tensor([lead.as_slice(), &[*total]].concat())])
        }
        Op::PadRow { index, rows } => {
            arity(1)?;
            match tensor(0)? {
                &[n] if index < rows => Ok(vec![Ty::Tensor(vec![*rows, n])]),
                d => err(format!("row of {:?}", d)),
            }
        }
        Op::PadTime { t, steps } => {
            arity(1)?;
            match tensor(0)? {
                &[b, f] if t < steps => Ok(vec![Ty::Tensor(vec![b, *steps, f])]),
                d => err(format!("step of {:?}", d)),
            }
        }
        Op::ReverseTime => {
            arity(1)?;
            let s = tensor(0)?;
            if s.len() < 2 {
                return err("no time axis".into());
            }
            Ok(vec![Ty::Tensor(s.to_vec())])
        }
        Op::LossGrad(_) => {
            arity(2)?;
            let y = tensor(0)?;
            if tensor(1)? != y || y.is_empty() {
                return err(format!("targets {:?} for a prediction {:?}", tensor(1)?, y));
            }
            Ok(vec![Ty::Tensor(vec![1]), Ty::Tensor(y.to_vec())])
        }
        Op::Update(_) => {
            arity(5)?;
            let w = tensor(0)?;
            if (1..4).any(|i| tensor(i).map(|s| s != w).unwrap_or(true)) {
                return err("weight, gradient and slots differ in shape".into());
            }
            if tensor(4)? != [1] {
                return err("the learning rate is not [1]".into());
            }
            Ok(vec![Ty::Tensor(w.to_vec()); 3])
        }
    }
}

impl Function {
    /// An empty function with an entry block.
    pub fn new(name: impl Into<String>) -> Function {
        Function {
            name: name.into(),
            values: Vec::new(),
            insts: Vec::new(),
            blocks: vec![BlockData::default()],
            entry: Block(0),
            input_roles: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// The type of a value.
    pub fn ty(&self, v: Value) -> &Ty {
        &self.values[v.index()].ty
    }

    /// The shape of a tensor value (empty for an index).
    pub fn shape(&self, v: Value) -> &[usize] {
        self.ty(v).shape().unwrap_or(&[])
    }

    /// An instruction.
    pub fn inst(&self, i: Inst) -> &InstData {
        &self.insts[i.index()]
    }

    /// A block.
    pub fn block(&self, b: Block) -> &BlockData {
        &self.blocks[b.index()]
    }

    /// A new empty block.
    pub fn new_block(&mut self) -> Block {
        self.blocks.push(BlockData::default());
        Block(self.blocks.len() as u32 - 1)
    }

    /// Adds a parameter of type `ty` to `block`.
    pub fn add_param(&mut self, block: Block, ty: Ty) -> Value {
        let v = Value(self.values.len() as u32);
        let index = self.blocks[block.index()].params.len();
        self.values.push(ValueData {
            ty,
            def: ValueDef::Param(block, index),
        });
        self.blocks[block.index()].params.push(v);
        v
    }

    /// Adds a function input.
    pub fn add_input(&mut self, role: InputRole, shape: Vec<usize>) -> Value {
        self.input_roles.push(role);
        self.add_param(self.entry, Ty::Tensor(shape))
    }

    /// Appends an instruction with explicitly given result types.
    pub fn push_typed(
        &mut self,
        block: Block,
        op: Op,
        args: Vec<Value>,
        tys: Vec<Ty>,
        origin: Option<Origin>,
    ) -> Inst {
        let inst = Inst(self.insts.len() as u32);
        let results = tys
            .into_iter()
            .enumerate()
            .map(|(i, ty)| {
                self.values.push(ValueData {
                    ty,
                    def: ValueDef::Result(inst, i),
                });
                Value(self.values.len() as u32 - 1)
            })
            .collect();
        self.insts.push(InstData {
            op,
            args,
            results,
            origin,
        });
        self.blocks[block.index()].insts.push(inst);
        inst
    }

    /// Appends an instruction whose result types follow from [`infer`]; returns its first result.
    pub fn push(
        &mut self,
        block: Block,
        op: Op,
        args: &[Value],
        origin: Option<Origin>,
    ) -> Result<Option<Value>, IrError> {
        let tys: Vec<&Ty> = args.iter().map(|&a| self.ty(a)).collect();
        let out = infer(&op, &tys)?;
        let inst = self.push_typed(block, op, args.to_vec(), out, origin);
        Ok(self.insts[inst.index()].results.first().copied())
    }

    /// Appends an instruction to the arena without placing it in a block.
    pub fn make_inst(
        &mut self,
        op: Op,
        args: Vec<Value>,
        tys: Vec<Ty>,
        origin: Option<Origin>,
    ) -> Inst {
        let inst = self.push_typed(self.entry, op, args, tys, origin);
        self.blocks[self.entry.index()].insts.pop();
        inst
    }

    /// Makes an instruction whose result types follow from [`infer`], without placing it.
    pub fn make(
        &mut self,
        op: Op,
        args: Vec<Value>,
        origin: Option<Origin>,
    ) -> Result<Inst, IrError> {
        let tys: Vec<&Ty> = args.iter().map(|&a| self.ty(a)).collect();
        let out = infer(&op, &tys)?;
        Ok(self.make_inst(op, args, out, origin))
    }

    /// The first result of an instruction.
    pub fn result(&self, i: Inst) -> Value {
        self.insts[i.index()].results[0]
    }

    /// The instruction defining `v`, if it is not a block parameter.
    pub fn def_inst(&self, v: Value) -> Option<Inst> {
        match self.values[v.index()].def {
            ValueDef::Result(i, _) => Some(i),
            ValueDef::Param(..) => None,
        }
    }

    /// The op defining `v`, if it is not a block parameter.
    pub fn def_op(&self, v: Value) -> Option<&Op> {
        self.def_inst(v).map(|i| &self.insts[i.index()].op)
    }

    /// The inputs: each entry parameter with its role, in order.
    pub fn inputs(&self) -> impl Iterator<Item = (InputRole, Value)> + '_ {
        self.input_roles
            .iter()
            .cloned()
            .zip(self.block(self.entry).params.iter().copied())
    }

    /// Replaces every use of `old` (operands of reachable instructions, outputs) by `new`.
    pub fn replace_uses(&mut self, old: Value, new: Value) {
        let mut all = Vec::new();
        self.walk(self.entry, &mut |i| all.push(i));
        for i in all {
            for a in &mut self.insts[i.index()].args {
                if *a == old {
                    *a = new;
                }
            }
        }
        for (_, v) in &mut self.outputs {
            if *v == old {
                *v = new;
            }
        }
    }

    /// How often each value is used by reachable instructions and outputs.
    pub fn use_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.values.len()];
        self.walk(self.entry, &mut |i| {
            for a in &self.insts[i.index()].args {
                counts[a.index()] += 1;
            }
        });
        for (_, v) in &self.outputs {
            counts[v.index()] += 1;
        }
        counts
    }

    /// Whether the function overwrites some of its inputs (a training step's `update`s).
    pub fn writes_inputs(&self) -> bool {
        let mut any = false;
        self.walk(self.entry, &mut |i| {
            any |= matches!(self.insts[i.index()].op, Op::Update(_));
        });
        any
    }

    /// The blocks reachable from the entry (the entry and loop bodies), outer before inner.
    pub fn reachable_blocks(&self) -> Vec<Block> {
        let mut out = vec![self.entry];
        self.walk(self.entry, &mut |i| {
            if let Op::Loop { body, .. } = self.insts[i.index()].op {
                out.push(body);
            }
        });
        out
    }

    /// The values a loop body uses that it does not define (including those of nested bodies).
    pub fn free_uses(&self, body: Block) -> Vec<Value> {
        let mut defined: std::collections::HashSet<Value> =
            self.block(body).params.iter().copied().collect();
        let mut used = Vec::new();
        self.walk(body, &mut |i| {
            let d = &self.insts[i.index()];
            used.extend(d.args.iter().copied());
            defined.extend(d.results.iter().copied());
        });
        let mut free: Vec<Value> = used.into_iter().filter(|v| !defined.contains(v)).collect();
        free.sort();
        free.dedup();
        free
    }

    /// The instructions of `block` and, recursively, of the loop bodies inside it, in order.
    pub fn walk(&self, block: Block, f: &mut impl FnMut(Inst)) {
        for &i in &self.blocks[block.index()].insts {
            f(i);
            if let Op::Loop { body, .. } = self.insts[i.index()].op {
                self.walk(body, f);
            }
        }
    }
}
