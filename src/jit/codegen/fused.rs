//! Fused elementwise kernels: their code (in one pass over a row, or two when
//! activations feed activations; where the CPU has AVX-512F or AVX2, one pass per level
//! of activations, which the host's vector code computes between the passes), and
//! their outlined form, a function of a row range that `lstmc_rows` splits between
//! threads.

use super::{flags, math, Emitter, Hosts, Mat, Tuning, SMALL_LOOP};
use crate::ir::{BinOp, FNode, Function, FusedKernel, IrError, Value as IrValue};
use crate::jit::plan::{Loc, Plan};
use crate::model::Activation;
use cranelift_codegen::ir::{
    types, AbiParam, InstBuilder, MemFlagsData, Signature, StackSlotData, StackSlotKind, Type,
    Value,
};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{FuncId, Module, ModuleError};
use std::collections::HashMap;

/// The size of the stack scratch row that a function's two-pass fused kernels share, in
/// bytes: the first-level activations of a row of up to 2,048 LSTM units, in L1.
const SCRATCH_MAX: usize = 32 << 10;

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
    /// No output overlaps an input ([`Emitter::disjoint`]).
    movable: bool,
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
        steps: HashMap::new(),
        hosts,
        flags,
        outline: None,
        outer: HashMap::new(),
        scratch: None,
        profile: None,
    };
    e.fused_rows(
        &kernel.kernel,
        &ins,
        &outs,
        kernel.movable,
        Some((first, end)),
    )?;
    e.b.ins().return_(&[]);
    e.b.seal_all_blocks();
    Ok(())
}

impl Emitter<'_, '_, '_> {
    /// A fused kernel: inline, or outlined and called through `lstmc_rows` when it is
    /// large enough to split between threads.
    pub(super) fn fused(
        &mut self,
        k: &FusedKernel,
        ins: &[Mat],
        outs: &[Mat],
        movable: bool,
    ) -> Result<(), IrError> {
        let (rows, cols) = (outs[0].rows, outs[0].cols);
        let parallel = self.tuning.threads > 1
            && rows >= 2
            && rows * cols >= self.tuning.parallel_elems
            && self.outline.is_some();
        if !parallel {
            return self.fused_rows(k, ins, outs, movable, None);
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
            movable,
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

    /// Whether two values' memory cannot overlap, for all the steps of the loops whose
    /// step numbers place them (two views placed by the same step number are compared at
    /// the same step).
    pub(super) fn disjoint(&self, a: IrValue, b: IrValue) -> Result<bool, IrError> {
        let (a, b) = (self.plan.loc(a)?, self.plan.loc(b)?);
        if a.base != b.base {
            return Ok(true);
        }
        // [lo, hi) in elements, over every step of the view's loop.
        let range = |l: &Loc, same_step: bool| -> Option<(isize, isize)> {
            let (lo, hi) = (l.offset, l.extent(1));
            match l.k {
                Some((k, per_k)) if !same_step => {
                    let span = per_k * (self.steps.get(&k)?.saturating_sub(1) as isize);
                    Some((lo + span.min(0), hi + span.max(0)))
                }
                _ => Some((lo, hi)),
            }
        };
        let same_step = matches!((a.k, b.k), (Some(x), Some(y)) if x == y);
        Ok(match (range(&a, same_step), range(&b, same_step)) {
            (Some((alo, ahi)), Some((blo, bhi))) => ahi <= blo || bhi <= alo,
            _ => false,
        })
    }

    /// A fused kernel's code, over all its rows, or over `first..end` when given.
    /// `movable`: no output overlaps an input, so the vector loop's loads may move next
    /// to their first use.
    fn fused_rows(
        &mut self,
        k: &FusedKernel,
        ins: &[Mat],
        outs: &[Mat],
        movable: bool,
        range: Option<(Value, Value)>,
    ) -> Result<(), IrError> {
        let (rows, cols) = (outs[0].rows, outs[0].cols);
        // Loads are ordered side effects unless marked `can_move`, and Cranelift places
        // pure code where the stores at the end first need it: so every load came first
        // and stayed live across all the activations (W3's cell kernel spilled 14 of
        // them). A load may move only where no store of the kernel can change what it
        // reads (`movable`), and only in a real loop over the columns, whose index makes
        // its address unique to this kernel, so that it cannot merge with a load of the
        // same address elsewhere, across the stores in between.
        let looped = cols.div_ceil(4) > SMALL_LOOP;
        let movable = movable && looped;
        // Two passes over a row when activations feed activations (an LSTM cell: the
        // gates' sigmoids, then tanh of the new cell state). Done in one pass, each
        // vector's work is one chain of two activations and a division each, about 100
        // cycles long, and the core's window holds little more than one vector's
        // instructions, so the chains barely overlap. The first pass computes the
        // activations that read no other into a scratch row on the stack (in L1); the
        // second reads them back and does the rest.
        //
        // Where the host has wide activations (`wide_activations`), every tanh and
        // sigmoid goes through the scratch row instead, one level at a time: a pass
        // stores the arguments of one level's activations, sorted by kind, and one host
        // call per kind turns them into the activations in place, which later passes
        // read back. (Staging only the first level, the rest in 128-bit code, measured
        // 1–2% better on W3's and W5's training steps and 4% worse on W2's; putting the
        // training forward's saved activations straight into their output rows, 5–10%
        // worse on W3's cell.)
        let level = activation_levels(k);
        let padded = cols.div_ceil(4) * 4;
        let costly_nodes: Vec<usize> = (0..k.nodes.len())
            .filter(|&n| costly(&k.nodes[n]))
            .collect();
        let fits = |n: usize| n * padded * 4 <= SCRATCH_MAX;
        let host = self.tuning.wide_activations
            && looped
            && !costly_nodes.is_empty()
            && fits(costly_nodes.len());
        // Per costly node, the inputs whose sum is its argument, when the host can read
        // them itself (an LSTM gate: projection, product and bias); no pass stores those.
        let direct: Vec<Option<Vec<usize>>> = (0..k.nodes.len())
            .map(|n| match k.nodes[n] {
                FNode::Act(_, x) if host && costly(&k.nodes[n]) => input_sum(k, x),
                _ => None,
            })
            .collect();
        // The stages before the last pass, each a list of (scratch row, node).
        let mut stages: Vec<Vec<(usize, usize)>> = Vec::new();
        if host {
            let mut order = costly_nodes;
            order.sort_by_key(|&n| (level[n], direct[n].is_none(), activate_code(&k.nodes[n])));
            for (j, &n) in order.iter().enumerate() {
                match stages.last_mut() {
                    Some(stage) if level[stage[0].1] == level[n] => stage.push((j, n)),
                    _ => stages.push(vec![(j, n)]),
                }
            }
        } else {
            // Only rows long enough for a real loop: shorter ones are straight-line code
            // whose vectors the core overlaps anyway, and there the round trip through the
            // scratch row lengthens a small step's chain (W1 forward 0.210 -> 0.22-0.25 µs).
            let firsts: Vec<usize> = costly_nodes
                .into_iter()
                .filter(|&n| level[n] == 1)
                .collect();
            if level.iter().any(|&l| l >= 2) && fits(firsts.len()) && looped {
                stages.push(firsts.into_iter().enumerate().collect());
            }
        }
        // One slot per function, whatever the number of kernels: a slot each made a
        // 3-layer LSTM(2048)'s frame 1.5 MB, too much for a thread's stack.
        let scratch = if stages.is_empty() {
            None
        } else {
            Some(*self.scratch.get_or_insert_with(|| {
                self.b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    SCRATCH_MAX as u32,
                    4,
                ))
            }))
        };
        let scratch_flags = MemFlagsData::trusted();
        let row_bytes = (padded * 4) as i32;
        let body = |e: &mut Self, r: Value| {
            let in_rows: Vec<Value> = ins
                .iter()
                .enumerate()
                .map(|(i, m)| if k.broadcast[i] { m.ptr } else { e.row(m, r) })
                .collect();
            let out_rows: Vec<Value> = outs.iter().map(|m| e.row(m, r)).collect();
            let base = scratch.map(|slot| e.b.ins().stack_addr(types::I64, slot, 0));
            // Per node, where in the scratch row its value is, once a stage has put it there.
            let mut staged: Vec<Option<i32>> = vec![None; k.nodes.len()];
            for stage in &stages {
                let base = base.ok_or_else(|| IrError("a stage without scratch".into()))?;
                let stored: Vec<(usize, usize)> = stage
                    .iter()
                    .copied()
                    .filter(|&(_, n)| direct[n].is_none())
                    .collect();
                e.columns(
                    if stored.is_empty() { 0 } else { cols },
                    true,
                    |e, off, ty| {
                        let mut t = vec![None; k.nodes.len()];
                        let at = e.b.ins().iadd(base, off);
                        let ctx = Ctx {
                            ty,
                            movable,
                            ins,
                            in_rows: &in_rows,
                            off,
                            staged: Some((at, &staged)),
                        };
                        for &(j, n) in &stored {
                            // The host computes the activation from its argument.
                            let target = match k.nodes[n] {
                                FNode::Act(_, x) if host => x,
                                _ => n,
                            };
                            let v = e.node(k, &mut t, target, &ctx);
                            e.b.ins().store(scratch_flags, v, at, j as i32 * row_bytes);
                        }
                        Ok(())
                    },
                )?;
                if host {
                    // One call per node the host sums itself, then one per run of stored
                    // arguments of one kind.
                    let runs = stage.chunk_by(|a, b| {
                        direct[a.1].is_none()
                            && direct[b.1].is_none()
                            && activate_code(&k.nodes[a.1]) == activate_code(&k.nodes[b.1])
                    });
                    for run in runs {
                        let (j, n) = run[0];
                        let at = e.b.ins().iadd_imm_s(base, j as i64 * row_bytes as i64);
                        let terms = direct[n].as_deref().unwrap_or(&[]);
                        let mut args = vec![
                            e.imm(activate_code(&k.nodes[n])),
                            at,
                            e.imm((run.len() * padded) as i64),
                            e.imm(terms.len() as i64),
                        ];
                        for slot in 0..4 {
                            args.push(match terms.get(slot) {
                                Some(&i) => in_rows[i],
                                None => at,
                            });
                        }
                        // The next row of the term whose rows lie farthest apart, for the
                        // host to ask for ahead (0: none). A step's rows of the hoisted
                        // input projection (W3: `[batch, time, 4·units]`) are a whole
                        // sequence apart, each a stream of its own that the hardware's
                        // prefetchers found late: the first load of every gate's call
                        // waited on L3.
                        let far = terms
                            .iter()
                            .filter(|&&i| !k.broadcast[i] && ins[i].rows > 1)
                            .max_by_key(|&&i| ins[i].stride);
                        args.push(match far {
                            Some(&i) => e.b.ins().iadd_imm_s(in_rows[i], ins[i].stride),
                            None => e.imm(0),
                        });
                        e.b.ins().call(e.hosts.activate, &args);
                    }
                }
                for &(j, n) in stage {
                    staged[n] = Some(j as i32 * row_bytes);
                }
            }
            e.columns(cols, true, |e, off, ty| {
                let mut t = vec![None; k.nodes.len()];
                let at = base.map(|base| e.b.ins().iadd(base, off));
                let ctx = Ctx {
                    ty,
                    movable,
                    ins,
                    in_rows: &in_rows,
                    off,
                    staged: at.map(|at| (at, staged.as_slice())),
                };
                // Every load is emitted before the first store (and a load that may
                // move reads nothing an output overlaps), so an output may overwrite an
                // input's buffer.
                let results: Vec<Value> = k
                    .outputs
                    .iter()
                    .map(|&n| e.node(k, &mut t, n, &ctx))
                    .collect();
                for (v, &row) in results.into_iter().zip(&out_rows) {
                    e.store(v, row, off);
                }
                Ok(())
            })
        };
        match range {
            Some((first, end)) => self.range(first, end, body),
            None => self.counted(rows, body),
        }
    }

    /// Node `n` of a fused kernel at one column offset, computing (once) what it needs,
    /// or reading it from the scratch row where a stage put it; `t` holds the nodes
    /// computed so far.
    fn node(&mut self, k: &FusedKernel, t: &mut [Option<Value>], n: usize, c: &Ctx) -> Value {
        if let Some(v) = t[n] {
            return v;
        }
        let ty = c.ty;
        if let Some((at, Some(off))) = c.staged.map(|(at, s)| (at, s[n])) {
            let v = self.b.ins().load(ty, MemFlagsData::trusted(), at, off);
            t[n] = Some(v);
            return v;
        }
        let mut arg = |e: &mut Self, a: usize| e.node(k, t, a, c);
        let v = match k.nodes[n] {
            FNode::Input(i) if c.movable && ty == types::F32X4 => {
                self.load_movable(ty, &c.ins[i], c.in_rows[i], c.off)
            }
            FNode::Input(i) => self.load(ty, &c.ins[i], c.in_rows[i], c.off),
            FNode::Bin(op, a, b) => {
                let (a, b) = (arg(self, a), arg(self, b));
                match op {
                    BinOp::Add => self.b.ins().fadd(a, b),
                    BinOp::Sub => self.b.ins().fsub(a, b),
                    BinOp::Mul => self.b.ins().fmul(a, b),
                }
            }
            FNode::Act(a, x) => {
                let x = arg(self, x);
                math::activation(self.b, ty, a, x)
            }
            FNode::OneMinus(x) => {
                let x = arg(self, x);
                let one = math::cst(self.b, ty, 1.0);
                self.b.ins().fsub(one, x)
            }
            FNode::ActGrad(a, x, y, dy) => {
                let (x, y, dy) = (arg(self, x), arg(self, y), arg(self, dy));
                math::activation_grad(self.b, ty, a, x, y, dy)
            }
        };
        t[n] = Some(v);
        v
    }
}

/// What [`Emitter::node`] reads at one column offset: the vector type, whether input
/// loads may move, the inputs and their rows, the offset, and the scratch row's address
/// at this offset with, per node, where a stage put its value.
struct Ctx<'a> {
    ty: Type,
    movable: bool,
    ins: &'a [Mat],
    in_rows: &'a [Value],
    off: Value,
    staged: Option<(Value, &'a [Option<i32>])>,
}

/// The inputs whose sum, left to right, node `n` is (`((a + b) + c) + d`), if it is
/// one of at most four. (Only in that order: with two NaNs, which one's payload a sum
/// keeps depends on the order of its operands.)
fn input_sum(k: &FusedKernel, n: usize) -> Option<Vec<usize>> {
    let terms = match k.nodes[n] {
        FNode::Input(i) => vec![i],
        FNode::Bin(BinOp::Add, a, b) => match k.nodes[b] {
            FNode::Input(i) => [input_sum(k, a)?, vec![i]].concat(),
            _ => return None,
        },
        _ => return None,
    };
    (terms.len() <= 4).then_some(terms)
}

/// `lstmc_activate`'s code for a costly activation node: 0 tanh, 1 sigmoid.
fn activate_code(node: &FNode) -> i64 {
    i64::from(matches!(node, FNode::Act(Activation::Sigmoid, _)))
}

/// Per node of a fused kernel, the most activations on a path from the inputs to it
/// (its own included).
fn activation_levels(k: &FusedKernel) -> Vec<usize> {
    let mut level: Vec<usize> = Vec::with_capacity(k.nodes.len());
    for node in &k.nodes {
        let l = match *node {
            FNode::Input(_) => 0,
            FNode::Bin(_, a, b) => level[a].max(level[b]),
            FNode::Act(_, x) => level[x] + usize::from(costly(node)),
            FNode::OneMinus(x) => level[x],
            FNode::ActGrad(_, x, y, dy) => level[x].max(level[y]).max(level[dy]),
        };
        level.push(l);
    }
    level
}

/// Whether a node is a costly activation (tanh or sigmoid, a division each): the only
/// ones that count in [`activation_levels`].
fn costly(node: &FNode) -> bool {
    matches!(node, FNode::Act(Activation::Tanh | Activation::Sigmoid, _))
}
