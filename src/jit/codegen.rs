//! Code generation: an optimized forward [`Function`] and its [`Plan`] →
//! Cranelift IR for one native function
//! `extern "C" fn(inputs: *const *const f32, arena: *mut f32)`.
//!
//! The hybrid rule of DESIGN.md: fused elementwise kernels, activations,
//! copies and matmuls up to [`Tuning::gemm_crossover`] multiply-adds are
//! generated as `f32x4` code (FMA where the CPU has it); larger matmuls call
//! the host symbol `lstmc_gemm`, backed by the `gemm` crate, and softmax calls
//! `lstmc_softmax`. Loads carry `notrap` (the runtime checks every buffer
//! before the call), and loads from inputs `readonly` too.

use super::math;
use super::plan::{Base, Loc, Plan};
use crate::ir::{BinOp, FNode, Function, FusedKernel, IrError, Op, Value as IrValue};
use crate::model::Optimizer;
use cranelift_codegen::ir::{
    condcodes::IntCC, types, AbiParam, FuncRef, InstBuilder, MemFlagsData, Signature,
    StackSlotData, StackSlotKind, Type, Value,
};
use cranelift_frontend::{FunctionBuilder, Variable};
use cranelift_module::{FuncId, Module, ModuleError};
use std::collections::HashMap;

/// Loops of at most this many iterations are unrolled when generated.
const SMALL_LOOP: usize = 4;

/// Knobs of code generation.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Matmuls of at least this many multiply-adds call the host GEMM.
    pub gemm_crossover: usize,
    /// Threads the host GEMM may use.
    pub threads: usize,
    /// Matmuls of at least this many multiply-adds use all threads.
    pub parallel_min: usize,
    /// Fused elementwise kernels of at least this many output elements (and two rows)
    /// are generated as functions of a row range, which `lstmc_rows` splits between
    /// threads (with `threads > 1` only).
    pub parallel_elems: usize,
    /// Adam's and RMSprop's updates call the host's 512-bit kernels (`lstmc_update`): on
    /// by default where the CPU has AVX-512F. Square roots and divisions bound these
    /// updates, and Cranelift's 128-bit ones took a third of the tutorial's training
    /// step (`lstmc bench W2 --phase train`: see the commit that added this).
    pub wide_updates: bool,
    /// Products with at most this many rows (`a`'s in `a · w` and `d · wᵀ`, the summed
    /// rows in `aᵀ · d`) and at least 4,096 multiply-adds call the host's
    /// 512-bit kernels (`lstmc_few_rows`) where the CPU has AVX-512F; 0 turns them off.
    pub few_rows_max: usize,
    /// Few-row products of at least this many multiply-adds split the rows of their
    /// weight between threads (with `threads > 1`), as its optimizer update does, so
    /// that each core keeps its rows of the weight, gradient and slots in its own cache.
    pub parallel_few_rows: usize,
}

impl Default for Tuning {
    fn default() -> Tuning {
        // Measured with `lstmc bench --gemm-crossover N` on this machine (2026-12-04):
        // W1 (matmuls of at most 48 multiply-adds): 0.217 µs generated, 0.292 µs all on the
        // host GEMM; W2 (batch 1, 1×128·128×512 = 65,536): 17.0 µs generated, 18.6–20.9 µs
        // on the GEMM; W3 (32×256·256×1024 = 8.4M): 12.7 ms on the GEMM, 44.7 ms generated.
        // Cranelift's f32x4 peaks near 8 multiply-adds per cycle; the GEMM's AVX-512 kernels
        // need enough rows to pay for packing.
        Tuning {
            gemm_crossover: 1 << 18,
            threads: 1,
            parallel_min: 1 << 20,
            parallel_elems: 1 << 12,
            wide_updates: super::native::wide_updates(),
            few_rows_max: if super::native::wide_updates() { 4 } else { 0 },
            parallel_few_rows: 1 << 15,
        }
    }
}

/// Products of fewer multiply-adds stay in generated code even with few rows: below
/// this, a host call costs more than Cranelift's 128-bit vectors lose.
const FEW_ROWS_MIN: usize = 1 << 12;

/// `d · wᵀ` products of at most this many multiply-adds are generated ([`Emitter::dot_rows`]).
const DOT_ROWS_MAX: usize = 1 << 12;

/// Host functions the generated code calls.
pub struct Hosts {
    /// `lstmc_loss`
    pub loss: FuncRef,
    /// `lstmc_gemm`
    pub gemm: FuncRef,
    /// `lstmc_softmax`
    pub softmax: FuncRef,
    /// `lstmc_gemm_strided`
    pub gemm_strided: FuncRef,
    /// `lstmc_softmax_grad`
    pub softmax_grad: FuncRef,
    /// `lstmc_update`
    pub update: FuncRef,
    /// `lstmc_rows`
    pub rows: FuncRef,
    /// `lstmc_few_rows`
    pub few_rows: FuncRef,
}

/// The layout of one operand of an outlined kernel: rows, columns, row stride in bytes,
/// and whether it is a read-only input.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    rows: usize,
    cols: usize,
    stride: i64,
    readonly: bool,
}

/// A fused elementwise kernel outlined into its own function
/// `extern "C" fn(operands: *const *mut f32, first_row: u64, end_row: u64)`, so that
/// `lstmc_rows` can run its rows on several threads. The caller passes the operands'
/// addresses (inputs, then outputs) in a stack slot.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The function to define.
    pub id: FuncId,
    kernel: FusedKernel,
    ins: Vec<Layout>,
    outs: Vec<Layout>,
}

/// The signature of an outlined [`Kernel`].
pub fn kernel_signature(module: &dyn Module) -> Signature {
    let mut sig = module.make_signature();
    sig.params
        .extend(std::iter::repeat_n(AbiParam::new(types::I64), 3));
    sig
}

/// Where generated code declares the functions it outlines.
pub struct Outline<'a> {
    /// The module that will define them.
    pub module: &'a mut dyn Module,
    /// The kernels declared so far, to define after the calling function.
    pub kernels: Vec<Kernel>,
}

/// The memory flags of a function's code: a training step writes its weights and slots
/// in place, so then no input is read-only.
fn flags(f: &Function) -> Flags {
    let read_input = if f.writes_inputs() {
        MemFlagsData::new().with_notrap()
    } else {
        MemFlagsData::new().with_notrap().with_readonly()
    };
    Flags {
        table: MemFlagsData::trusted().with_readonly(),
        write: MemFlagsData::new().with_notrap(),
        read_input,
    }
}

/// Emits the body of the forward function into `b` (whose entry block has the two
/// pointer parameters); the kernels it outlines are declared in `outline`.
pub fn emit(
    f: &Function,
    plan: &Plan,
    tuning: &Tuning,
    b: &mut FunctionBuilder,
    hosts: Hosts,
    outline: &mut Outline,
) -> Result<(), IrError> {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let table = b.block_params(entry)[0];
    let arena = b.block_params(entry)[1];
    let flags = flags(f);
    let mut inputs = Vec::new();
    for i in 0..f.input_roles.len() {
        let p = b.ins().load(types::I64, flags.table, table, (i * 8) as i32);
        inputs.push(p);
    }
    let mut e = Emitter {
        b,
        f,
        plan,
        tuning: *tuning,
        inputs,
        arena,
        ks: HashMap::new(),
        hosts,
        flags,
        outline: Some(outline),
        outer: deferred_outer(f, plan, tuning)?,
    };
    e.block(f.entry)?;
    e.b.ins().return_(&[]);
    e.b.seal_all_blocks();
    Ok(())
}

/// Emits the body of an outlined kernel of `f` into `b` (whose signature is
/// [`kernel_signature`]).
pub fn emit_kernel(
    f: &Function,
    plan: &Plan,
    tuning: &Tuning,
    b: &mut FunctionBuilder,
    hosts: Hosts,
    kernel: &Kernel,
) -> Result<(), IrError> {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let [operands, first, end] = [0, 1, 2].map(|i| b.block_params(entry)[i]);
    let flags = flags(f);
    let mut mats = kernel
        .ins
        .iter()
        .chain(&kernel.outs)
        .enumerate()
        .map(|(i, l)| Mat {
            ptr: b
                .ins()
                .load(types::I64, flags.table, operands, (i * 8) as i32),
            rows: l.rows,
            cols: l.cols,
            stride: l.stride,
            readonly: l.readonly,
        });
    let ins: Vec<Mat> = mats.by_ref().take(kernel.ins.len()).collect();
    let outs: Vec<Mat> = mats.collect();
    let mut e = Emitter {
        b,
        f,
        plan,
        tuning: *tuning,
        inputs: Vec::new(),
        arena: operands,
        ks: HashMap::new(),
        hosts,
        flags,
        outline: None,
        outer: HashMap::new(),
    };
    e.fused_rows(&kernel.kernel, &ins, &outs, Some((first, end)))?;
    e.b.ins().return_(&[]);
    e.b.seal_all_blocks();
    Ok(())
}

struct Emitter<'a, 'b, 'c> {
    b: &'a mut FunctionBuilder<'b>,
    f: &'a Function,
    plan: &'a Plan,
    tuning: Tuning,
    inputs: Vec<Value>,
    arena: Value,
    ks: HashMap<IrValue, Value>,
    hosts: Hosts,
    flags: Flags,
    /// Where to declare outlined kernels (none inside a kernel).
    outline: Option<&'a mut Outline<'c>>,
    /// Gradients `aᵀ · d` that their update computes (see [`deferred_outer`]), with `a`, `d`.
    outer: HashMap<IrValue, (IrValue, IrValue)>,
}

/// The weight gradients `aᵀ · d` over few rows whose only use is a 512-bit Adam or
/// RMSprop update later in the same block: `lstmc_update` computes them row by row
/// as it updates, instead of storing them whole (the tutorial's recurrent kernel, its two
/// slots and its gradient overflow the L2 cache; without the gradient they fit). Only
/// where no instruction in between writes over `a` or `d` (the plan may give their
/// slots to later values once the product has read them).
fn deferred_outer(
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

/// The memory flags of the generated code's loads and stores.
#[derive(Clone, Copy)]
struct Flags {
    /// Loads from the input pointer table.
    table: MemFlagsData,
    /// Stores, and loads from the arena.
    write: MemFlagsData,
    /// Loads from inputs (weights, x, states): never written during a call.
    read_input: MemFlagsData,
}

/// A matrix ready for code: the address of element (0, 0), its shape and row stride in bytes.
#[derive(Clone, Copy)]
struct Mat {
    ptr: Value,
    rows: usize,
    cols: usize,
    stride: i64,
    readonly: bool,
}

impl Emitter<'_, '_, '_> {
    fn mat(&mut self, loc: Loc) -> Result<Mat, IrError> {
        let base = match loc.base {
            Base::Input(i) => self.inputs[i],
            Base::Arena => self.arena,
        };
        let mut ptr = if loc.offset != 0 {
            self.b.ins().iadd_imm_s(base, (loc.offset * 4) as i64)
        } else {
            base
        };
        if let Some((k, per_k)) = loc.k {
            let kv = *self
                .ks
                .get(&k)
                .ok_or_else(|| IrError(format!("step number {k} used outside its loop")))?;
            let off = self.b.ins().imul_imm_s(kv, (per_k * 4) as i64);
            ptr = self.b.ins().iadd(ptr, off);
        }
        Ok(Mat {
            ptr,
            rows: loc.rows,
            cols: loc.cols,
            stride: (loc.row_stride * 4) as i64,
            readonly: matches!(loc.base, Base::Input(_)),
        })
    }

    fn val(&mut self, v: IrValue) -> Result<Mat, IrError> {
        let loc = self.plan.loc(v)?;
        self.mat(loc)
    }

    /// `for i in 0..n { body(i) }`; `n == 1` runs the body once, without a loop.
    fn counted(
        &mut self,
        n: usize,
        mut body: impl FnMut(&mut Self, Value) -> Result<(), IrError>,
    ) -> Result<(), IrError> {
        if n == 0 {
            return Ok(());
        }
        // Short loops are unrolled: their indices become constants that fold into addresses.
        if n <= SMALL_LOOP {
            for i in 0..n {
                let iv = self.b.ins().iconst(types::I64, i as i64);
                body(self, iv)?;
            }
            return Ok(());
        }
        let (zero, end) = (self.imm(0), self.imm(n as i64));
        self.range(zero, end, body)
    }

    /// `for i in first..end { body(i) }`, as a loop.
    fn range(
        &mut self,
        first: Value,
        end: Value,
        mut body: impl FnMut(&mut Self, Value) -> Result<(), IrError>,
    ) -> Result<(), IrError> {
        let header = self.b.create_block();
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, types::I64);
        self.b.ins().jump(header, &[first.into()]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let more = self.b.ins().icmp(IntCC::UnsignedLessThan, i, end);
        self.b.ins().brif(more, inner, &[], exit, &[]);
        self.b.switch_to_block(inner);
        body(self, i)?;
        let next = self.b.ins().iadd_imm_s(i, 1);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    fn row(&mut self, m: &Mat, r: Value) -> Value {
        if m.rows == 1 {
            return m.ptr;
        }
        let off = self.b.ins().imul_imm_s(r, m.stride);
        self.b.ins().iadd(m.ptr, off)
    }

    fn block(&mut self, blk: crate::ir::Block) -> Result<(), IrError> {
        for &i in &self.f.block(blk).insts {
            let d = self.f.inst(i);
            match &d.op {
                Op::SliceLast { .. } | Op::Row { .. } | Op::TimeStep { .. } | Op::Yield => {}
                Op::Zeros(_) => {
                    let m = self.val(d.results[0])?;
                    self.fill_zero(&m)?;
                }
                Op::MatMul => {
                    let a = self.val(d.args[0])?;
                    let w = self.val(d.args[1])?;
                    let c = self.val(d.results[0])?;
                    self.matmul(a, w, c)?;
                }
                Op::Softmax => {
                    let a = self.val(d.args[0])?;
                    let c = self.val(d.results[0])?;
                    let args = [
                        self.rows_arg(&a),
                        self.rows_arg(&c),
                        [self.imm(c.rows as i64), self.imm(c.cols as i64)],
                    ]
                    .concat();
                    self.b.ins().call(self.hosts.softmax, &args);
                }
                Op::Stack => {
                    // Rows of the result are (batch, step) pairs, `dst.stride` bytes apart.
                    let dst = self.val(d.results[0])?;
                    let t = d.args.len() as i64;
                    for (step, &a) in d.args.iter().enumerate() {
                        let src = self.val(a)?;
                        let slot = Mat {
                            ptr: self.b.ins().iadd_imm_s(dst.ptr, step as i64 * dst.stride),
                            rows: src.rows,
                            cols: src.cols,
                            stride: t * dst.stride,
                            readonly: false,
                        };
                        self.copy(&src, &slot)?;
                    }
                }
                Op::Fused(k) => {
                    let ins: Vec<Mat> = d
                        .args
                        .iter()
                        .map(|&a| self.val(a))
                        .collect::<Result<_, _>>()?;
                    let outs: Vec<Mat> = d
                        .results
                        .iter()
                        .map(|&r| self.val(r))
                        .collect::<Result<_, _>>()?;
                    self.fused(k, &ins, &outs)?;
                }
                Op::Loop {
                    body,
                    steps,
                    per_iter,
                } => self.lp(i, *body, *steps, *per_iter)?,
                // Gradients.
                Op::MatMulBT => {
                    // c (m×k) = d (m×n) · wᵀ, w (k×n) read transposed.
                    let (dd, w, c) = (
                        self.val(d.args[0])?,
                        self.val(d.args[1])?,
                        self.val(d.results[0])?,
                    );
                    // One accumulator chain per output: worth it only for tiny products
                    // (W1's 36 multiply-adds: train 1.17 -> 1.09 µs), not for W2's 65,536
                    // (epoch 3.6 -> 5.4 ms), which the GEMM does faster.
                    if c.rows * c.cols * dd.cols <= DOT_ROWS_MAX {
                        self.dot_rows(dd, w, c)?;
                        continue;
                    }
                    if self.few_rows(1, c.rows, c.rows, c.cols, dd.cols, &dd, &w, &c) {
                        continue;
                    }
                    self.gemm_strided(
                        c.rows,
                        c.cols,
                        dd.cols,
                        (dd.ptr, dd.stride / 4, 1),
                        (w.ptr, 1, w.stride / 4),
                        &c,
                    )?;
                }
                Op::MatMulAT if self.outer.contains_key(&d.results[0]) => {
                    // Computed by its update (`deferred_outer`).
                }
                Op::MatMulAT => {
                    // c (k×n) = aᵀ · d over all rows of a (m×k) and d (m×n).
                    let (a, dd, c) = (
                        self.val(d.args[0])?,
                        self.val(d.args[1])?,
                        self.val(d.results[0])?,
                    );
                    if self.few_rows(2, a.rows, a.rows, c.cols, a.cols, &a, &dd, &c) {
                        continue;
                    }
                    if a.rows * a.cols * dd.cols < self.tuning.gemm_crossover {
                        // Small: generated, with `a` read transposed (its rows are aᵀ's
                        // columns), below the crossover where a host call costs more.
                        let at = Mat {
                            rows: a.cols,
                            cols: a.rows,
                            stride: 4,
                            ..a
                        };
                        self.matmul_generated(at, a.stride, dd, c)?;
                        continue;
                    }
                    self.gemm_strided(
                        c.rows,
                        c.cols,
                        a.rows,
                        (a.ptr, 1, a.stride / 4),
                        (dd.ptr, dd.stride / 4, 1),
                        &c,
                    )?;
                }
                Op::SumRows => {
                    let (src, out) = (self.val(d.args[0])?, self.val(d.results[0])?);
                    self.fill_zero(&out)?;
                    self.counted(src.rows, |e, r| {
                        let row = e.row(&src, r);
                        e.columns(src.cols, true, |e, off, ty| {
                            let v = e.load(ty, &src, row, off);
                            let acc = e.load(ty, &out, out.ptr, off);
                            let s = e.b.ins().fadd(acc, v);
                            e.store(s, out.ptr, off);
                            Ok(())
                        })
                    })?;
                }
                Op::ActGrad(act) => {
                    let ins: Vec<Mat> = d
                        .args
                        .iter()
                        .map(|&a| self.val(a))
                        .collect::<Result<_, _>>()?;
                    let out = self.val(d.results[0])?;
                    let act = *act;
                    self.map(&ins, &out, &|b, ty, v| match v {
                        // Without `x`, the derivative reads `y` only (it is passed for both).
                        &[y, dy] => math::activation_grad(b, ty, act, y, y, dy),
                        _ => math::activation_grad(b, ty, act, v[0], v[1], v[2]),
                    })?;
                }
                Op::SoftmaxGrad => {
                    let (y, dy, out) = (
                        self.val(d.args[0])?,
                        self.val(d.args[1])?,
                        self.val(d.results[0])?,
                    );
                    let args = [
                        self.rows_arg(&y),
                        self.rows_arg(&dy),
                        self.rows_arg(&out),
                        [self.imm(out.rows as i64), self.imm(out.cols as i64)],
                    ]
                    .concat();
                    self.b.ins().call(self.hosts.softmax_grad, &args);
                }
                Op::PadLast { start, .. } => {
                    let (src, out) = (self.val(d.args[0])?, self.val(d.results[0])?);
                    self.fill_zero(&out)?;
                    let at = Mat {
                        ptr: self.b.ins().iadd_imm_s(out.ptr, (*start * 4) as i64),
                        cols: src.cols,
                        ..out
                    };
                    self.copy(&src, &at)?;
                }
                Op::ConcatLast { starts, .. } => {
                    let out = self.val(d.results[0])?;
                    let pieces: Vec<Mat> = d
                        .args
                        .iter()
                        .map(|&a| self.val(a))
                        .collect::<Result<_, _>>()?;
                    if pieces.iter().map(|p| p.cols).sum::<usize>() < out.cols {
                        self.fill_zero(&out)?;
                    }
                    for (src, &start) in pieces.iter().zip(starts) {
                        let at = Mat {
                            ptr: self.b.ins().iadd_imm_s(out.ptr, (start * 4) as i64),
                            cols: src.cols,
                            ..out
                        };
                        self.copy(src, &at)?;
                    }
                }
                Op::PadRow { index, .. } => {
                    let (src, out) = (self.val(d.args[0])?, self.val(d.results[0])?);
                    self.fill_zero(&out)?;
                    let at = Mat {
                        ptr: self.b.ins().iadd_imm_s(out.ptr, *index as i64 * out.stride),
                        rows: 1,
                        ..out
                    };
                    self.copy(&src, &at)?;
                }
                Op::PadTime { t, steps } => {
                    let (src, out) = (self.val(d.args[0])?, self.val(d.results[0])?);
                    self.fill_zero(&out)?;
                    let at = Mat {
                        ptr: self.b.ins().iadd_imm_s(out.ptr, *t as i64 * out.stride),
                        rows: src.rows,
                        cols: src.cols,
                        stride: *steps as i64 * out.stride,
                        readonly: false,
                    };
                    self.copy(&src, &at)?;
                }
                Op::LossGrad(kind) => {
                    let (y, t) = (self.val(d.args[0])?, self.val(d.args[1])?);
                    let (value, dy) = (self.val(d.results[0])?, self.val(d.results[1])?);
                    let args = [
                        &[self.imm(super::host::loss_code(*kind))][..],
                        &self.rows_arg(&y),
                        &self.rows_arg(&t),
                        &self.rows_arg(&dy),
                        &[self.imm(y.rows as i64), self.imm(y.cols as i64), value.ptr],
                    ]
                    .concat();
                    self.b.ins().call(self.hosts.loss, &args);
                }
                Op::Update(kind) => {
                    let ms: Vec<Mat> = d
                        .args
                        .iter()
                        .map(|&a| self.val(a))
                        .collect::<Result<_, _>>()?;
                    let outer = match self.outer.get(&d.args[1]) {
                        Some(&(a, dd)) => Some((self.val(a)?, self.val(dd)?)),
                        None => None,
                    };
                    self.update(*kind, &ms, outer)?;
                }
                Op::ReverseTime => {
                    let (src, out) = (self.val(d.args[0])?, self.val(d.results[0])?);
                    let steps = self.f.shape(d.args[0])[1];
                    let batch = src.rows / steps;
                    for t in 0..steps {
                        let from = Mat {
                            ptr: self.b.ins().iadd_imm_s(src.ptr, t as i64 * src.stride),
                            rows: batch,
                            stride: steps as i64 * src.stride,
                            ..src
                        };
                        let to = Mat {
                            ptr: self
                                .b
                                .ins()
                                .iadd_imm_s(out.ptr, (steps - 1 - t) as i64 * out.stride),
                            rows: batch,
                            stride: steps as i64 * out.stride,
                            ..out
                        };
                        self.copy(&from, &to)?;
                    }
                }
                op => {
                    return Err(IrError(format!(
                        "code generation expects optimized IR; found {}",
                        op.mnemonic()
                    )))
                }
            }
        }
        Ok(())
    }

    fn imm(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// A matrix as a host function takes it: its address and its row stride in elements.
    fn rows_arg(&mut self, m: &Mat) -> [Value; 2] {
        [m.ptr, self.imm(m.stride / 4)]
    }

    fn lp(
        &mut self,
        i: crate::ir::Inst,
        body: crate::ir::Block,
        steps: usize,
        per_iter: usize,
    ) -> Result<(), IrError> {
        let d = self.f.inst(i).clone();
        let params = self.f.block(body).params.clone();
        let n = d.args.len();
        for (&init, &p) in d.args.iter().zip(&params[1..]) {
            let (src, dst) = (self.plan.loc(init)?, self.plan.loc(p)?);
            if src != dst {
                let (s, t) = (self.mat(src)?, self.mat(dst)?);
                self.copy(&s, &t)?;
            }
        }
        let yield_args = self
            .f
            .inst(
                *self
                    .f
                    .block(body)
                    .insts
                    .last()
                    .ok_or_else(|| IrError("empty loop body".into()))?,
            )
            .args
            .clone();
        let stacked = d.results[n..].to_vec();
        self.counted(steps, |e, k| {
            e.ks.insert(params[0], k);
            e.block(body)?;
            // Per-step values into the stacked results: time k·per_iter + j.
            for (s, &r) in stacked.iter().enumerate() {
                let dst = e.val(r)?;
                let t = e.f.shape(r)[1] as i64;
                let st = e.plan.loc(r)?;
                for j in 0..per_iter {
                    let y = yield_args[n + j * stacked.len() + s];
                    // Planned in its slice already (`plan::stacked_in_place`): no copy.
                    let yl = e.plan.loc(y)?;
                    let rs = st.row_stride as isize;
                    if yl.base == st.base
                        && yl.k == Some((params[0], per_iter as isize * rs))
                        && yl.offset == st.offset + j as isize * rs
                        && yl.row_stride as i64 == t * rs as i64
                    {
                        continue;
                    }
                    let src = e.val(y)?;
                    let step = e.b.ins().imul_imm_s(k, per_iter as i64);
                    let step = e.b.ins().iadd_imm_s(step, j as i64);
                    let off = e.b.ins().imul_imm_s(step, dst.stride);
                    let slot = Mat {
                        ptr: e.b.ins().iadd(dst.ptr, off),
                        rows: src.rows,
                        cols: src.cols,
                        stride: t * dst.stride,
                        readonly: false,
                    };
                    e.copy(&src, &slot)?;
                }
            }
            // Carried values into the parameters for the next step.
            for (&y, &p) in yield_args[..n].iter().zip(&params[1..]) {
                let (src, dst) = (e.plan.loc(y)?, e.plan.loc(p)?);
                if src != dst {
                    let (s, t) = (e.mat(src)?, e.mat(dst)?);
                    e.copy(&s, &t)?;
                }
            }
            Ok(())
        })?;
        self.ks.remove(&params[0]);
        Ok(())
    }

    /// Calls `f(col_ptr_offset_bytes, width)` over a row's columns: 4-wide chunks, then scalars.
    /// With `whole`, the last partial group is one more vector: only for kernels whose
    /// destinations are their own arena slots, whose rows have room for whole vectors
    /// ([`super::plan::padded_stride`]); reads past a row stay in bounds by the plan's slack.
    fn columns(
        &mut self,
        cols: usize,
        whole: bool,
        mut chunk: impl FnMut(&mut Self, Value, Type) -> Result<(), IrError>,
    ) -> Result<(), IrError> {
        let vecs = if whole { cols.div_ceil(4) } else { cols / 4 };
        self.counted(vecs, |e, j| {
            let off = e.b.ins().imul_imm_s(j, 16);
            chunk(e, off, types::F32X4)
        })?;
        for c in (vecs * 4).min(cols)..cols {
            let off = self.imm((c * 4) as i64);
            chunk(self, off, types::F32)?;
        }
        Ok(())
    }

    fn load(&mut self, ty: Type, m: &Mat, row: Value, off: Value) -> Value {
        let p = self.b.ins().iadd(row, off);
        let fl = if m.readonly {
            self.flags.read_input
        } else {
            self.flags.write
        };
        self.b.ins().load(ty, fl, p, 0)
    }

    fn store(&mut self, v: Value, row: Value, off: Value) {
        let p = self.b.ins().iadd(row, off);
        self.b.ins().store(self.flags.write, v, p, 0);
    }

    /// `c = a · b` on the host GEMM, with each operand's (pointer, row stride, column
    /// stride) in elements, so that either may be read transposed.
    fn gemm_strided(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        a: (Value, i64, i64),
        b: (Value, i64, i64),
        c: &Mat,
    ) -> Result<(), IrError> {
        let threads = if m * n * k >= self.tuning.parallel_min {
            self.tuning.threads
        } else {
            1
        };
        let args = [
            self.imm(m as i64),
            self.imm(n as i64),
            self.imm(k as i64),
            a.0,
            self.imm(a.1),
            self.imm(a.2),
            b.0,
            self.imm(b.1),
            self.imm(b.2),
            c.ptr,
            self.imm(c.stride / 4),
            self.imm(threads as i64),
        ];
        self.b.ins().call(self.hosts.gemm_strided, &args);
        Ok(())
    }

    /// `out = f(ins...)` elementwise, all of one shape.
    fn map(
        &mut self,
        ins: &[Mat],
        out: &Mat,
        f: &dyn Fn(&mut FunctionBuilder, Type, &[Value]) -> Value,
    ) -> Result<(), IrError> {
        let out = *out;
        self.counted(out.rows, |e, r| {
            let rows: Vec<Value> = ins.iter().map(|m| e.row(m, r)).collect();
            let orow = e.row(&out, r);
            e.columns(out.cols, true, |e, off, ty| {
                let v: Vec<Value> = ins
                    .iter()
                    .zip(&rows)
                    .map(|(m, &row)| e.load(ty, m, row, off))
                    .collect();
                let y = f(e.b, ty, &v);
                e.store(y, orow, off);
                Ok(())
            })
        })
    }

    fn fill_zero(&mut self, m: &Mat) -> Result<(), IrError> {
        let m = *m;
        self.counted(m.rows, |e, r| {
            let row = e.row(&m, r);
            e.columns(m.cols, true, |e, off, ty| {
                let z = math::cst(e.b, ty, 0.0);
                e.store(z, row, off);
                Ok(())
            })
        })
    }

    fn copy(&mut self, src: &Mat, dst: &Mat) -> Result<(), IrError> {
        let (src, dst) = (*src, *dst);
        self.counted(src.rows, |e, r| {
            let (sr, dr) = (e.row(&src, r), e.row(&dst, r));
            e.columns(src.cols, false, |e, off, ty| {
                let v = e.load(ty, &src, sr, off);
                e.store(v, dr, off);
                Ok(())
            })
        })
    }

    /// A fused kernel: inline, or outlined and called through `lstmc_rows` when it is
    /// large enough to split between threads.
    fn fused(&mut self, k: &FusedKernel, ins: &[Mat], outs: &[Mat]) -> Result<(), IrError> {
        let (rows, cols) = (outs[0].rows, outs[0].cols);
        let parallel = self.tuning.threads > 1
            && rows >= 2
            && rows * cols >= self.tuning.parallel_elems
            && self.outline.is_some();
        if !parallel {
            return self.fused_rows(k, ins, outs, None);
        }
        let layout = |m: &Mat| Layout {
            rows: m.rows,
            cols: m.cols,
            stride: m.stride,
            readonly: m.readonly,
        };
        let outline = self
            .outline
            .as_mut()
            .ok_or_else(|| IrError("no module to outline a kernel into".into()))?;
        let sig = kernel_signature(outline.module);
        let id = outline
            .module
            .declare_anonymous_function(&sig)
            .map_err(|e: ModuleError| IrError(format!("cranelift: {e}")))?;
        let callee = outline.module.declare_func_in_func(id, self.b.func);
        outline.kernels.push(Kernel {
            id,
            kernel: k.clone(),
            ins: ins.iter().map(layout).collect(),
            outs: outs.iter().map(layout).collect(),
        });
        let n = ins.len() + outs.len();
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (n * 8) as u32,
            3,
        ));
        for (i, m) in ins.iter().chain(outs).enumerate() {
            self.b
                .ins()
                .stack_store(types::I64, m.ptr, slot, (i * 8) as i32);
        }
        let operands = self.b.ins().stack_addr(types::I64, slot, 0);
        let callee = self.b.ins().func_addr(types::I64, callee);
        let args = [
            callee,
            operands,
            self.imm(rows as i64),
            self.imm(self.tuning.threads as i64),
        ];
        self.b.ins().call(self.hosts.rows, &args);
        Ok(())
    }

    /// A fused kernel's code, over all its rows, or over `first..end` when given.
    fn fused_rows(
        &mut self,
        k: &FusedKernel,
        ins: &[Mat],
        outs: &[Mat],
        range: Option<(Value, Value)>,
    ) -> Result<(), IrError> {
        let (rows, cols) = (outs[0].rows, outs[0].cols);
        let body = |e: &mut Self, r: Value| {
            let in_rows: Vec<Value> = ins
                .iter()
                .enumerate()
                .map(|(i, m)| if k.broadcast[i] { m.ptr } else { e.row(m, r) })
                .collect();
            let out_rows: Vec<Value> = outs.iter().map(|m| e.row(m, r)).collect();
            e.columns(cols, true, |e, off, ty| {
                let mut t: Vec<Value> = Vec::with_capacity(k.nodes.len());
                for node in &k.nodes {
                    let v = match *node {
                        FNode::Input(i) => e.load(ty, &ins[i], in_rows[i], off),
                        FNode::Bin(BinOp::Add, a, b) => e.b.ins().fadd(t[a], t[b]),
                        FNode::Bin(BinOp::Sub, a, b) => e.b.ins().fsub(t[a], t[b]),
                        FNode::Bin(BinOp::Mul, a, b) => e.b.ins().fmul(t[a], t[b]),
                        FNode::Act(a, x) => math::activation(e.b, ty, a, t[x]),
                        FNode::OneMinus(x) => {
                            let one = math::cst(e.b, ty, 1.0);
                            e.b.ins().fsub(one, t[x])
                        }
                        FNode::ActGrad(a, x, y, dy) => {
                            math::activation_grad(e.b, ty, a, t[x], t[y], t[dy])
                        }
                    };
                    t.push(v);
                }
                for (o, &node) in k.outputs.iter().enumerate() {
                    e.store(t[node], out_rows[o], off);
                }
                Ok(())
            })
        };
        match range {
            Some((first, end)) => self.range(first, end, body),
            None => self.counted(rows, body),
        }
    }

    /// One optimizer step, in place, on `w`, with gradient `g`, slots `s1`, `s2` and the
    /// step's learning rate `rate[0]` (`ms` in that order): the formulas of
    /// [`crate::optim::update`], in f32 as Keras runs them. Only a row's real columns are
    /// written: a weight's padding stays zero.
    fn update(
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

    /// `c = a · w` with `a: m×k`, `w: k×n`.
    fn matmul(&mut self, a: Mat, w: Mat, c: Mat) -> Result<(), IrError> {
        let (m, k, n) = (a.rows, a.cols, w.cols);
        if self.few_rows(0, m, m, n, k, &a, &w, &c) {
            return Ok(());
        }
        let work = m * n * k;
        if work >= self.tuning.gemm_crossover {
            let threads = if work >= self.tuning.parallel_min {
                self.tuning.threads
            } else {
                1
            };
            let args = [
                &[self.imm(m as i64), self.imm(n as i64), self.imm(k as i64)][..],
                &self.rows_arg(&a),
                &self.rows_arg(&w),
                &self.rows_arg(&c),
                &[self.imm(threads as i64)],
            ]
            .concat();
            self.b.ins().call(self.hosts.gemm, &args);
            return Ok(());
        }
        self.matmul_generated(a, 4, w, c)
    }

    /// Calls `lstmc_few_rows` with `code` and `(m, n, k)` as it defines them, if the
    /// product's `rows` (see [`Tuning::few_rows_max`]) are few and its work is large
    /// enough; returns whether it did.
    #[allow(clippy::too_many_arguments)]
    fn few_rows(
        &mut self,
        code: i64,
        rows: usize,
        m: usize,
        n: usize,
        k: usize,
        a: &Mat,
        w: &Mat,
        c: &Mat,
    ) -> bool {
        if rows > self.tuning.few_rows_max || m * n * k < FEW_ROWS_MIN {
            return false;
        }
        let threads = if m * n * k >= self.tuning.parallel_few_rows {
            self.tuning.threads
        } else {
            1
        };
        let args = [
            &[
                self.imm(code),
                self.imm(m as i64),
                self.imm(n as i64),
                self.imm(k as i64),
            ][..],
            &self.rows_arg(a),
            &self.rows_arg(w),
            &self.rows_arg(c),
            &[self.imm(threads as i64)],
        ]
        .concat();
        self.b.ins().call(self.hosts.few_rows, &args);
        true
    }

    /// `c = d · wᵀ` in generated code, below the GEMM crossover: `c[i, j]` is the dot
    /// product of rows `d[i]` and `w[j]`, in 4-lane partial sums (whole vectors of the
    /// real columns), then their sum and the last columns one by one.
    fn dot_rows(&mut self, d: Mat, w: Mat, c: Mat) -> Result<(), IrError> {
        let (k, n) = (c.cols, d.cols);
        let vecs = n / 4;
        self.counted(c.rows, |e, i| {
            let (drow, crow) = (e.row(&d, i), e.row(&c, i));
            e.counted(k, |e, j| {
                let wrow = e.row(&w, j);
                let acc = e.b.declare_var(types::F32X4);
                let zero = math::cst(e.b, types::F32X4, 0.0);
                e.b.def_var(acc, zero);
                e.counted(vecs, |e, v| {
                    let off = e.b.ins().imul_imm_s(v, 16);
                    let dv = e.load(types::F32X4, &d, drow, off);
                    let wv = e.load(types::F32X4, &w, wrow, off);
                    let cur = e.b.use_var(acc);
                    let next = e.b.ins().fma(dv, wv, cur);
                    e.b.def_var(acc, next);
                    Ok(())
                })?;
                let a = e.b.use_var(acc);
                let lanes: Vec<Value> = (0..4u8).map(|l| e.b.ins().extractlane(a, l)).collect();
                let lo = e.b.ins().fadd(lanes[0], lanes[1]);
                let hi = e.b.ins().fadd(lanes[2], lanes[3]);
                let mut sum = e.b.ins().fadd(lo, hi);
                for t in vecs * 4..n {
                    let off = e.imm((t * 4) as i64);
                    let dv = e.load(types::F32, &d, drow, off);
                    let wv = e.load(types::F32, &w, wrow, off);
                    sum = e.b.ins().fma(dv, wv, sum);
                }
                let off = e.b.ins().imul_imm_s(j, 4);
                e.store(sum, crow, off);
                Ok(())
            })
        })
    }

    /// `c = a · w` in generated code, `a`'s elements `a_cs` bytes apart along a row (4, or
    /// its row stride for a transposed view): per row of a, columns of c in blocks of up to
    /// 8 vectors, k innermost.
    fn matmul_generated(&mut self, a: Mat, a_cs: i64, w: Mat, c: Mat) -> Result<(), IrError> {
        let (m, k, n) = (a.rows, a.cols, w.cols);
        self.counted(m, |e, r| {
            let arow = e.row(&a, r);
            let crow = e.row(&c, r);
            let mut col = 0;
            for width in [8usize, 4, 1] {
                let span = width * 4;
                let blocks = (n - col) / span;
                if blocks == 0 {
                    continue;
                }
                let start = col;
                e.counted(blocks, |e, jb| {
                    let off = e.b.ins().imul_imm_s(jb, (span * 4) as i64);
                    let off = e.b.ins().iadd_imm_s(off, (start * 4) as i64);
                    e.dot_block(&a, a_cs, &w, arow, off, k, width, types::F32X4, crow)
                })?;
                col += blocks * span;
            }
            if col < n {
                // The last columns as one vector: c's rows have room, w's rows are padded.
                let off = e.imm((col * 4) as i64);
                e.dot_block(&a, a_cs, &w, arow, off, k, 1, types::F32X4, crow)?;
            }
            Ok(())
        })
    }

    /// One block of `width` accumulators of `ty` (at byte offset `off` of the row) over all of `k`.
    #[allow(clippy::too_many_arguments)]
    fn dot_block(
        &mut self,
        a: &Mat,
        a_cs: i64,
        w: &Mat,
        arow: Value,
        off: Value,
        k: usize,
        width: usize,
        ty: Type,
        crow: Value,
    ) -> Result<(), IrError> {
        let lane = if ty == types::F32 { 4 } else { 16 };
        let accs: Vec<Variable> = (0..width).map(|_| self.b.declare_var(ty)).collect();
        for &v in &accs {
            let z = math::cst(self.b, ty, 0.0);
            self.b.def_var(v, z);
        }
        let wbase = self.b.ins().iadd(w.ptr, off);
        let (a, w) = (*a, *w);
        let step = |e: &mut Self, kk: Value| -> Result<(), IrError> {
            let aoff = e.b.ins().imul_imm_s(kk, a_cs);
            let x = e.load(types::F32, &a, arow, aoff);
            let xv = if ty == types::F32 {
                x
            } else {
                e.b.ins().splat(ty, x)
            };
            let woff = e.b.ins().imul_imm_s(kk, w.stride);
            let wrow = e.b.ins().iadd(wbase, woff);
            for (v, &acc) in accs.iter().enumerate() {
                let fl = if w.readonly {
                    e.flags.read_input
                } else {
                    e.flags.write
                };
                let wv = e.b.ins().load(ty, fl, wrow, (v * lane) as i32);
                let cur = e.b.use_var(acc);
                let next = e.b.ins().fma(xv, wv, cur);
                e.b.def_var(acc, next);
            }
            Ok(())
        };
        if k <= 4 {
            for kk in 0..k {
                let kv = self.imm(kk as i64);
                step(self, kv)?;
            }
        } else {
            self.counted(k, step)?;
        }
        let cbase = self.b.ins().iadd(crow, off);
        for (v, &acc) in accs.iter().enumerate() {
            let val = self.b.use_var(acc);
            self.b
                .ins()
                .store(self.flags.write, val, cbase, (v * lane) as i32);
        }
        Ok(())
    }
}
