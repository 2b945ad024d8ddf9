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

mod fused;
mod products;
mod update;

pub use fused::{emit_kernel, kernel_signature, Kernel, Outline};

use products::DOT_ROWS_MAX;
use update::deferred_outer;

use super::math;
use super::plan::{Base, Loc, Plan};
use crate::ir::{Function, IrError, Op, Value as IrValue};
use cranelift_codegen::ir::{
    condcodes::IntCC, types, FuncRef, InstBuilder, MemFlagsData, StackSlot, Type, Value,
};
use cranelift_frontend::FunctionBuilder;
use std::collections::HashMap;

/// Loops of at most this many iterations are unrolled when generated.
const SMALL_LOOP: usize = 4;

/// Copies, transposes and row sums of at least this many elements call the host
/// (`lstmc_copy`, `lstmc_transpose`, `lstmc_sum_rows`) instead of looping in generated
/// code (W3's training step copies 32×256 states twice a step, and its time reversals
/// 8 MB in all).
const COPY_CALL_MIN: usize = 1024;

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
    /// Adam's and RMSprop's updates call the host's vector kernels (`lstmc_update`): on
    /// by default where the CPU has AVX-512F, or AVX2 and FMA (16 or 8 lanes). Square
    /// roots and divisions bound these updates, and Cranelift's 128-bit ones took a third
    /// of the tutorial's training step (`lstmc bench W2 --phase train`: see the commit
    /// that added this).
    pub wide_updates: bool,
    /// Fused kernels over rows long enough for a loop stage their tanh and sigmoid
    /// activations in a scratch row and call the host's vector code for them
    /// (`lstmc_activate`), where the CPU has it: the same bits as the generated 128-bit
    /// code, which they replace.
    pub wide_activations: bool,
    /// Products with at most this many rows (`a`'s in `a · w` and `d · wᵀ`, the summed
    /// rows in `aᵀ · d`) and at least 4,096 multiply-adds call the host's vector kernels
    /// (`lstmc_few_rows`) where the CPU has them; 0 turns them off.
    pub few_rows_max: usize,
    /// Few-row products of at least this many multiply-adds split the rows of their
    /// weight between threads (with `threads > 1`), as its optimizer update does, so
    /// that each core keeps its rows of the weight, gradient and slots in its own cache.
    pub parallel_few_rows: usize,
    /// Loops' products against a weight read it packed (`passes::pack`, from
    /// [`passes::Options::pack_min`](crate::passes::Options::pack_min) multiply-adds up),
    /// multiplied by the host's AVX2 kernel (`jit::native::packed`): on by default where
    /// the CPU has AVX2 and FMA but not AVX-512F, where the `gemm` crate's 512-bit kernels
    /// were measured instead.
    pub packed_weights: bool,
}

impl Tuning {
    /// This tuning with the host's vector kernels turned off where the CPU lacks them
    /// (`native::wide_updates`): generated code never calls what cannot run.
    pub fn on_this_cpu(mut self) -> Tuning {
        if !super::native::wide_updates() {
            self.wide_updates = false;
            self.wide_activations = false;
            self.few_rows_max = 0;
        }
        if !super::native::packed::available() {
            self.packed_weights = false;
        }
        self
    }
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
            wide_activations: super::native::wide_updates(),
            few_rows_max: if super::native::wide_updates() { 4 } else { 0 },
            parallel_few_rows: 1 << 15,
            packed_weights: super::native::packed::preferred(),
        }
    }
}

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
    /// `lstmc_copy`
    pub copy: FuncRef,
    /// `lstmc_transpose`
    pub transpose: FuncRef,
    /// `lstmc_sum_rows`
    pub sum_rows: FuncRef,
    /// `lstmc_tick`
    pub tick: FuncRef,
    /// `lstmc_activate`
    pub activate: FuncRef,
    /// `lstmc_pack`
    pub pack: FuncRef,
    /// `lstmc_gemm_packed`
    pub gemm_packed: FuncRef,
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
/// pointer parameters); the kernels it outlines are declared in `outline`. With
/// `profile` (the address of a [`super::profile::Profile`]), the code counts the time of
/// each instruction.
pub fn emit(
    f: &Function,
    plan: &Plan,
    tuning: &Tuning,
    b: &mut FunctionBuilder,
    hosts: Hosts,
    outline: &mut Outline,
    profile: Option<i64>,
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
        steps: HashMap::new(),
        hosts,
        flags,
        outline: Some(outline),
        outer: deferred_outer(f, plan, tuning)?,
        scratch: None,
        profile: None,
    };
    if let Some(address) = profile {
        let p = e.imm(address);
        e.profile = Some(p);
        e.tick(super::profile::START);
    }
    e.block(f.entry)?;
    e.tick(super::profile::END);
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
    /// The step count of each loop whose step number is in `ks`.
    steps: HashMap<IrValue, usize>,
    hosts: Hosts,
    flags: Flags,
    /// Where to declare outlined kernels (none inside a kernel).
    outline: Option<&'a mut Outline<'c>>,
    /// Gradients `aᵀ · d` that their update computes (see [`deferred_outer`]), with `a`, `d`.
    outer: HashMap<IrValue, (IrValue, IrValue)>,
    /// The one scratch row of the function's two-pass kernels, made at the first one
    /// (they run one after another, so they share it).
    scratch: Option<StackSlot>,
    /// The address of the profile that counts each instruction's time, if any.
    profile: Option<Value>,
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

    /// Tells the profile, if any, that instruction `id` starts ([`super::profile`]).
    fn tick(&mut self, id: u64) {
        if let Some(p) = self.profile {
            let id = self.b.ins().iconst(types::I64, id as i64);
            self.b.ins().call(self.hosts.tick, &[p, id]);
        }
    }

    fn block(&mut self, blk: crate::ir::Block) -> Result<(), IrError> {
        for &i in &self.f.block(blk).insts {
            let d = self.f.inst(i);
            if !matches!(
                d.op,
                Op::SliceLast { .. } | Op::Row { .. } | Op::TimeStep { .. } | Op::Yield
            ) {
                self.tick(i.index() as u64);
            }
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
                    self.row_call(self.hosts.softmax, &a, &c);
                }
                Op::Stack => {
                    // Rows of the result are (batch, step) pairs, `dst.stride` bytes apart.
                    let dst = self.val(d.results[0])?;
                    let t = d.args.len() as i64;
                    for (step, &a) in d.args.iter().enumerate() {
                        // Written in its step by its kernel already.
                        if self.plan.in_stack.contains(&a) {
                            continue;
                        }
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
                    let movable = d.args.iter().all(|&a| {
                        d.results
                            .iter()
                            .all(|&r| self.disjoint(a, r).unwrap_or(false))
                    });
                    self.fused(k, &ins, &outs, movable)?;
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
                Op::Transpose => {
                    let (src, out) = (self.val(d.args[0])?, self.val(d.results[0])?);
                    self.transpose(&src, &out)?;
                }
                Op::Pack { transposed } => {
                    let (w, out) = (self.val(d.args[0])?, self.val(d.results[0])?);
                    // `b = w` (k × n, rows apart) or `wᵀ` (w's rows are b's columns).
                    let (k, n, rs, cs) = match transposed {
                        false => (w.rows, w.cols, w.stride / 4, 1),
                        true => (w.cols, w.rows, 1, w.stride / 4),
                    };
                    let args = [
                        w.ptr,
                        self.imm(rs),
                        self.imm(cs),
                        self.imm(k as i64),
                        self.imm(n as i64),
                        out.ptr,
                        self.imm(self.tuning.threads as i64),
                    ];
                    self.b.ins().call(self.hosts.pack, &args);
                }
                Op::MatMulPacked { .. } => {
                    let (a, p, c) = (
                        self.val(d.args[0])?,
                        self.val(d.args[1])?,
                        self.val(d.results[0])?,
                    );
                    self.matmul_packed(a, p, c);
                }
                Op::SumRows => {
                    let (src, out) = (self.val(d.args[0])?, self.val(d.results[0])?);
                    // Generated, each row's sum goes through memory (a load and a store per
                    // vector and row); large sums (a backward step's bias gradients, W3:
                    // four of 32×256 per step) call the host, which sums in the same order.
                    if src.rows * src.cols >= COPY_CALL_MIN {
                        let [p, s] = self.rows_arg(&src);
                        let args = [
                            p,
                            s,
                            out.ptr,
                            self.imm(src.rows as i64),
                            self.imm(src.cols as i64),
                        ];
                        self.b.ins().call(self.hosts.sum_rows, &args);
                    } else {
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
                    for ((src, &start), a) in pieces.iter().zip(starts).zip(&d.args) {
                        // Written in its columns by its kernel already.
                        if self.plan.in_concat.contains(a) {
                            continue;
                        }
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

    /// Calls a host function `(src, src_stride, dst, dst_stride, rows, cols)` that maps
    /// the rows of `src` to those of `dst` (`lstmc_softmax`, `lstmc_copy`), or transposes
    /// it (`lstmc_transpose`).
    fn row_call(&mut self, func: FuncRef, src: &Mat, dst: &Mat) {
        let args = [
            self.rows_arg(src),
            self.rows_arg(dst),
            [self.imm(src.rows as i64), self.imm(src.cols as i64)],
        ]
        .concat();
        self.b.ins().call(func, &args);
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
            e.steps.insert(params[0], steps);
            e.block(body)?;
            // Per-step values into the stacked results: time k·per_iter + j.
            for (s, &r) in stacked.iter().enumerate() {
                let dst = e.val(r)?;
                let t = e.f.shape(r)[1] as i64;
                for j in 0..per_iter {
                    let y = yield_args[n + j * stacked.len() + s];
                    // Planned in its slice already: no copy.
                    if e.plan.in_slice.get(&y) == Some(&(r, j)) {
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
        self.steps.remove(&params[0]);
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

    /// The flags of a load from `m`: `readonly` for an input no update writes.
    fn load_flags(&self, m: &Mat) -> MemFlagsData {
        if m.readonly {
            self.flags.read_input
        } else {
            self.flags.write
        }
    }

    fn load(&mut self, ty: Type, m: &Mat, row: Value, off: Value) -> Value {
        let p = self.b.ins().iadd(row, off);
        let fl = self.load_flags(m);
        self.b.ins().load(ty, fl, p, 0)
    }

    /// [`Self::load`] that Cranelift may move to its first use (see [`Self::fused_rows`]).
    fn load_movable(&mut self, ty: Type, m: &Mat, row: Value, off: Value) -> Value {
        let p = self.b.ins().iadd(row, off);
        // Cranelift moves only loads that are `readonly` as well: true for the kernel's
        // duration, which is all the movable load's address (unique to the kernel) sees.
        let fl = self.load_flags(m).with_readonly().with_can_move();
        self.b.ins().load(ty, fl, p, 0)
    }

    fn store(&mut self, v: Value, row: Value, off: Value) {
        let p = self.b.ins().iadd(row, off);
        self.b.ins().store(self.flags.write, v, p, 0);
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

    /// `out = srcᵀ`: row `r` of `src` becomes column `r` of `out`. It runs once per call,
    /// before the loop that reads it; large ones call the host, which gathers columns
    /// into vectors (`lstmc_transpose`), small ones go element by element here.
    fn transpose(&mut self, src: &Mat, out: &Mat) -> Result<(), IrError> {
        let (src, out) = (*src, *out);
        if src.rows * src.cols >= COPY_CALL_MIN {
            self.row_call(self.hosts.transpose, &src, &out);
            return Ok(());
        }
        self.counted(src.rows, |e, r| {
            let row = e.row(&src, r);
            let col = e.b.ins().imul_imm_s(r, 4);
            let col = e.b.ins().iadd(out.ptr, col);
            e.counted(src.cols, |e, c| {
                let from = e.b.ins().imul_imm_s(c, 4);
                let from = e.b.ins().iadd(row, from);
                let fl = e.load_flags(&src);
                let v = e.b.ins().load(types::F32, fl, from, 0);
                let to = e.b.ins().imul_imm_s(c, out.stride);
                let to = e.b.ins().iadd(col, to);
                e.b.ins().store(e.flags.write, v, to, 0);
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
        // A generated copy moves 16 bytes per trip of a loop that recomputes its row
        // addresses; the host's `memmove` moves 64 per instruction. Small copies (batch 1's
        // states) stay inline, where a call would cost more than the copy.
        if src.rows * src.cols >= COPY_CALL_MIN {
            self.row_call(self.hosts.copy, &src, &dst);
            return Ok(());
        }
        self.counted(src.rows, |e, r| {
            let (sr, dr) = (e.row(&src, r), e.row(&dst, r));
            e.columns(src.cols, false, |e, off, ty| {
                let v = e.load(ty, &src, sr, off);
                e.store(v, dr, off);
                Ok(())
            })
        })
    }
}
