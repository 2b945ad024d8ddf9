//! The only module with `unsafe`: it owns the JIT's executable memory, calls
//! the generated code, and provides the host functions that code calls.
//!
//! Safety argument, in one place:
//! - The generated function is `extern "C" fn(*const *const f32, *mut f32)`,
//!   the signature it was defined with (see [`super::compile`]).
//! - Every address it forms is `base + offset` of a location in its buffer
//!   plan, and the plan is checked at compile time to stay within each
//!   buffer's planned length ([`super::plan::Plan::check_bounds`]).
//! - [`NativeCode::call`] checks, before every call, that it receives exactly
//!   the planned number of inputs, each of exactly its planned length, and an
//!   arena at least as long as planned. The arena is exclusively borrowed for
//!   the call. Inputs are only read, except by a function that writes them (a
//!   training step's in-place updates), which only [`NativeCode::call_mut`]
//!   runs, with every input exclusively borrowed.
//! - The host functions are called only by that code, with pointers and
//!   sizes from the same checked plan. Those that split work between threads
//!   ([`pool`]: products, updates, outlined kernels through `lstmc_rows`) give
//!   each part disjoint rows or columns of the outputs (or a partial sum of
//!   its own), and return only when every part has finished, so no pointer
//!   outlives the call that passed it.
//! - The executable memory is freed when the `NativeCode` is dropped; the
//!   function pointer never leaves it, so no call can follow the free.
//!
//! The C ABI ([`capi`]) lives here too: it dereferences the pointers a C
//! caller passes, after checking each for NULL and each buffer's length
//! against the shapes it claims, and catches every panic at the boundary.

// Off x86-64 the CPU has no host vector set (`simd::Isa::detect` is `None`), so the
// host kernels are compiled but never run.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

mod activate;
pub mod capi;
mod choose;
mod flush;
#[cfg(all(test, target_arch = "x86_64"))]
mod kernel_tests;
pub mod packed;
mod pool;
mod simd;
mod transpose;
mod update;

use pool::Handoff;
pub use pool::{set_placement, Placement};
use simd::{Isa, Simd, VecKernel};
use transpose::{lstmc_transpose, Transpose};

use crate::error::{Error, Result};
use cranelift_jit::JITModule;
use cranelift_module::FuncId;
use std::sync::Mutex;

type Entry = unsafe extern "C" fn(*const *const f32, *mut f32);

/// Generated code, ready to call.
pub struct NativeCode {
    module: Mutex<Option<JITModule>>,
    entry: Entry,
    input_lens: Vec<usize>,
    arena_len: usize,
    writes_inputs: bool,
    /// Where the calls' small fork–joins run.
    chooser: choose::Chooser,
}

impl std::fmt::Debug for NativeCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeCode")
            .field("inputs", &self.input_lens)
            .field("arena_len", &self.arena_len)
            .finish()
    }
}

impl NativeCode {
    /// Takes ownership of a finalized module whose function `id` has the forward signature.
    pub(crate) fn new(
        module: JITModule,
        id: FuncId,
        input_lens: Vec<usize>,
        arena_len: usize,
        writes_inputs: bool,
    ) -> NativeCode {
        let ptr = module.get_finalized_function(id);
        // SAFETY: `id` was defined with the signature (i64, i64) -> () of the
        // System V ABI that `Entry` names, and its module is finalized.
        let entry = unsafe { std::mem::transmute::<*const u8, Entry>(ptr) };
        NativeCode {
            module: Mutex::new(Some(module)),
            entry,
            input_lens,
            arena_len,
            writes_inputs,
            chooser: choose::Chooser::default(),
        }
    }

    /// The arena elements a call needs.
    pub fn arena_len(&self) -> usize {
        self.arena_len
    }

    /// Whether the function writes its inputs (a training step updating weights in place):
    /// then it runs only by [`NativeCode::call_mut`].
    pub fn writes_inputs(&self) -> bool {
        self.writes_inputs
    }

    /// Runs a function that only reads its inputs: `inputs` in the function's input
    /// order, each of its planned length.
    pub fn call(&self, inputs: &[&[f32]], arena: &mut [f32]) -> Result<()> {
        if self.writes_inputs {
            return Err(Error::Internal(
                "this function updates its inputs: call it with call_mut".into(),
            ));
        }
        const ON_STACK: usize = 32;
        if inputs.len() <= ON_STACK {
            let mut ptrs = [(std::ptr::null::<f32>(), 0usize); ON_STACK];
            for (slot, x) in ptrs.iter_mut().zip(inputs) {
                *slot = (x.as_ptr(), x.len());
            }
            return self.checked_call(&ptrs[..inputs.len()], arena);
        }
        let ptrs: Vec<(*const f32, usize)> = inputs.iter().map(|x| (x.as_ptr(), x.len())).collect();
        self.checked_call(&ptrs, arena)
    }

    /// Runs a function that may write its inputs (each exclusively borrowed for the call).
    pub fn call_mut(&self, inputs: &mut [&mut [f32]], arena: &mut [f32]) -> Result<()> {
        let ptrs: Vec<(*const f32, usize)> = inputs
            .iter_mut()
            .map(|x| (x.as_mut_ptr() as *const f32, x.len()))
            .collect();
        self.checked_call(&ptrs, arena)
    }

    /// Checks every buffer against the plan, then calls. `inputs` are (pointer, length) of
    /// live borrows held by the caller for the whole call.
    fn checked_call(&self, inputs: &[(*const f32, usize)], arena: &mut [f32]) -> Result<()> {
        if inputs.len() != self.input_lens.len() {
            return Err(Error::Internal(format!(
                "{} inputs given, {} planned",
                inputs.len(),
                self.input_lens.len()
            )));
        }
        for (i, (&(_, len), &want)) in inputs.iter().zip(&self.input_lens).enumerate() {
            if len != want {
                return Err(Error::Internal(format!(
                    "input {i} has {len} elements, {want} planned"
                )));
            }
        }
        if arena.len() < self.arena_len {
            return Err(Error::Internal(format!(
                "arena of {} elements, {} planned",
                arena.len(),
                self.arena_len
            )));
        }
        // The pointer table lives on the stack for the usual handful of inputs.
        const ON_STACK: usize = 32;
        let mut small = [std::ptr::null::<f32>(); ON_STACK];
        let heap: Vec<*const f32>;
        let table: &[*const f32] = if inputs.len() <= ON_STACK {
            for (slot, &(p, _)) in small.iter_mut().zip(inputs) {
                *slot = p;
            }
            &small[..inputs.len()]
        } else {
            heap = inputs.iter().map(|&(p, _)| p).collect();
            &heap
        };
        // SAFETY: see the module documentation; every buffer was checked above.
        // Training steps flush denormals (see `flush`); a forward call keeps the caller's
        // mode, as setting and restoring it costs W1's forward 7% (15 ns of 0.22 µs).
        let _flush = self.writes_inputs.then(flush::Denormals::flushed);
        self.chooser
            .call(|| unsafe { (self.entry)(table.as_ptr(), arena.as_mut_ptr()) });
        Ok(())
    }
}

impl Drop for NativeCode {
    fn drop(&mut self) {
        let module = match self.module.get_mut() {
            Ok(m) => m.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(m) = module {
            // SAFETY: the only pointer into this code is `self.entry`, which dies with `self`.
            unsafe { m.free_memory() };
        }
    }
}

/// Runs `f(0)`, …, `f(parts - 1)` at once, part 0 on the calling thread and the others on
/// the [`pool`]'s workers (or all on the caller, in order, while another fork–join holds
/// them), and returns when every part has.
pub(crate) fn fork_join(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    pool::run(parts, Handoff::Always, f)
}

/// `c = a · b` for row-major f32 matrices with row strides, by the `gemm` crate.
#[allow(clippy::too_many_arguments)]
extern "C" fn lstmc_gemm(
    m: u64,
    n: u64,
    k: u64,
    a: *const f32,
    lda: u64,
    b: *const f32,
    ldb: u64,
    c: *mut f32,
    ldc: u64,
    threads: u64,
) {
    lstmc_gemm_strided(m, n, k, a, lda, 1, b, ldb, 1, c, ldc, threads);
}

/// Copies `rows` rows of `cols` f32s from `src` to `dst` (row strides in elements): the
/// carried states, per-step saves and time reversals that generated code would otherwise
/// move 16 bytes per loop trip (see `Emitter::copy`).
extern "C" fn lstmc_copy(
    src: *const f32,
    src_stride: u64,
    dst: *mut f32,
    dst_stride: u64,
    rows: u64,
    cols: u64,
) {
    for r in 0..rows as usize {
        // SAFETY: called by generated code with pointers and sizes from a bounds-checked plan
        // (every row lies inside the arena); `copy` allows the rows to overlap.
        unsafe {
            std::ptr::copy(
                src.add(r * src_stride as usize),
                dst.add(r * dst_stride as usize),
                cols as usize,
            );
        }
    }
}

/// `dst[c] = Σ_r src[r, c]` over `rows` rows of `cols` (the source's row stride in
/// elements), summed from row 0 on, as generated code sums: a bias gradient.
extern "C" fn lstmc_sum_rows(
    src: *const f32,
    src_stride: u64,
    dst: *mut f32,
    rows: u64,
    cols: u64,
) {
    let cols = cols as usize;
    // SAFETY: called by generated code with pointers and sizes from a bounds-checked plan;
    // the sum and its source are distinct slots.
    let out = unsafe { std::slice::from_raw_parts_mut(dst, cols) };
    out.fill(0.0);
    for r in 0..rows as usize {
        // SAFETY: as above, row `r` of the source.
        let row = unsafe { std::slice::from_raw_parts(src.add(r * src_stride as usize), cols) };
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// Row-wise softmax from `src` to `dst` (f32, with row strides).
extern "C" fn lstmc_softmax(
    src: *const f32,
    src_stride: u64,
    dst: *mut f32,
    dst_stride: u64,
    rows: u64,
    cols: u64,
) {
    for r in 0..rows as usize {
        // SAFETY: called by generated code with pointers and sizes from a bounds-checked plan;
        // source and destination are distinct arena slots.
        let (x, y) = unsafe {
            (
                std::slice::from_raw_parts(src.add(r * src_stride as usize), cols as usize),
                std::slice::from_raw_parts_mut(dst.add(r * dst_stride as usize), cols as usize),
            )
        };
        crate::jit::host::softmax_row(x, y);
    }
}

/// `c = a · b` with explicit row and column strides (elements) for `a` and `b`, so that
/// either is read transposed (the gradient products `d · wᵀ` and `aᵀ · d`). With
/// `threads > 1`, the columns of `c` (or its rows, when it has more) are split between
/// the calling thread and the [`pool`]'s workers, each running the single-threaded kernel.
#[allow(clippy::too_many_arguments)]
extern "C" fn lstmc_gemm_strided(
    m: u64,
    n: u64,
    k: u64,
    a: *const f32,
    a_rs: u64,
    a_cs: u64,
    b: *const f32,
    b_rs: u64,
    b_cs: u64,
    c: *mut f32,
    c_rs: u64,
    threads: u64,
) {
    let product = Product {
        k: k as usize,
        a,
        a_rs: a_rs as usize,
        a_cs: a_cs as usize,
        b,
        b_rs: b_rs as usize,
        b_cs: b_cs as usize,
        c,
        c_rs: c_rs as usize,
    };
    let (m, n) = (m as usize, n as usize);
    let parts = pool::parts(threads as usize);
    // By rows where each part gets 8 rows or more: then a batch's rows stay on the core
    // that computes them, as in the fused kernels that `lstmc_rows` splits by rows after
    // a recurrent step's product, and the next step's product reads the rows of `h` its
    // own core wrote. Split by columns, half of what each core's cell kernel read came
    // from the other core. Alternating runs at two threads, against the column split:
    // W3 forward -2.6%, W4 forward -0.8%, W3 train -1.8%, W4 train -4.7%, W5 train -5%
    // (in the host's far spells), W5 forward unchanged.
    if parts == 1 {
        product.block(0..m, 0..n);
    } else if m < 8 * parts && n >= m {
        // Column blocks stay multiples of 16 (one 512-bit vector) where they can.
        pool::run(parts, Handoff::Always, &|i| {
            product.block(0..m, split_part(n, parts, 16, i))
        });
    } else {
        pool::run(parts, Handoff::Always, &|i| {
            product.block(split_part(m, parts, 8, i), 0..n)
        });
    }
}

/// Part `i` of `0..len` split in `parts` (the rows or columns of a host product, the
/// panels of a packing): `align`-multiples of the same length, the last part with rows
/// taking the rest; but never a rest of one row or column, which the `gemm` crate
/// multiplies with its matrix–vector kernel, summing in another order than its matrix
/// kernel does for the same row among others (seen on AArch64: a 9-row product split
/// 8 + 1 had other bits than on one thread). Then the part before gives it `align` of
/// its own.
fn split_part(len: usize, parts: usize, align: usize, i: usize) -> std::ops::Range<usize> {
    let step = len.div_ceil(parts).next_multiple_of(align).max(1);
    // The part that holds the rest: the last with any rows.
    let rest = len.div_ceil(step).max(1) - 1;
    let lone = rest > 0 && len - rest * step == 1;
    let start = |i: usize| {
        let at = (i * step).min(len);
        if lone && i == rest {
            at - align
        } else {
            at
        }
    };
    let end = if i + 1 == parts { len } else { start(i + 1) };
    start(i)..end
}

/// The operands of one product `c = a · b` (see [`lstmc_gemm_strided`]).
struct Product {
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    c: *mut f32,
    c_rs: usize,
}

// SAFETY: the parts of a split product write disjoint blocks of `c` and only read `a`, `b`.
unsafe impl Sync for Product {}

impl Product {
    /// `c[rows, cols] = a[rows, :] · b[:, cols]` on this thread.
    fn block(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        if rows.is_empty() || cols.is_empty() {
            return;
        }
        // The gemm crate repacks the weight operand (its lhs) when the other dimension
        // exceeds 8 of its 6-column microkernel blocks: W4's recurrent product (64 rows)
        // repacked its 4 MB recurrent kernel at every step. At 16 blocks it reads the
        // weight in place up to 96 rows: W4 forward at 1 thread 275.3-278.1 -> 267.5-270.5
        // ms, alternating runs (W3 and W5, at 32 rows, never repacked). It is a
        // process-wide setting of the gemm crate.
        static PACKING: std::sync::Once = std::sync::Once::new();
        PACKING.call_once(|| gemm::set_lhs_packing_threshold_single_thread(16));
        if self.b_rs == 1
            && crate::passes::transpose::reads_weight_transposed(rows.len(), self.k, cols.len())
        {
            return self.block_by_columns(rows, cols);
        }
        // SAFETY: called by generated code with pointers and sizes from a bounds-checked
        // plan, for a block inside the planned `m × n` product.
        unsafe {
            let c = self.c.add(rows.start * self.c_rs + cols.start);
            self.gemm_into(rows, cols, c, 1, self.c_rs as isize)
        }
    }

    /// `dst = a[rows, :] · b[:, cols]` by the `gemm` crate, `dst`'s element `(i, j)` at
    /// `i · dst_rs + j · dst_cs`.
    ///
    /// # Safety
    /// Rows `rows` of `a` and columns `cols` of `b` lie in the planned operands, and `dst`
    /// holds the `rows × cols` elements so placed.
    unsafe fn gemm_into(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        dst: *mut f32,
        dst_cs: isize,
        dst_rs: isize,
    ) {
        // SAFETY: the caller's.
        unsafe {
            gemm::gemm(
                rows.len(),
                cols.len(),
                self.k,
                dst,
                dst_cs,
                dst_rs,
                false,
                self.a.add(rows.start * self.a_rs),
                self.a_cs as isize,
                self.a_rs as isize,
                self.b.add(cols.start * self.b_cs),
                self.b_cs as isize,
                self.b_rs as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    }

    /// [`Product::block`] for a weight `b` stored column by column (a transposed weight,
    /// `passes::transpose::reads_weight_transposed`): the product column by column into
    /// this thread's scratch, where the `gemm` crate streams `b` instead of repacking it,
    /// then transposed into `c` by tiles of 16 columns.
    fn block_by_columns(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let (m, n) = (rows.len(), cols.len());
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < m * n {
                scratch.resize(m * n, 0.0);
            }
            let s = &mut scratch[..m * n];
            // SAFETY: as in `block`: rows `rows` of `a` and columns `cols` of `b` lie in
            // the planned operands, and `s` holds `m × n` elements, column `j` at `j · m`.
            unsafe { self.gemm_into(rows.clone(), cols.clone(), s.as_mut_ptr(), m as isize, 1) };
            let mut j0 = 0;
            if let (Some(isa), true) = (Isa::detect(), m <= (i32::MAX / 64) as usize) {
                // `s` is `n` rows of `m` (its columns), their transpose the block of `c`.
                let t = Transpose {
                    src: s,
                    ss: m,
                    // SAFETY: the block's first element, in the planned `c`.
                    dst: unsafe { self.c.add(rows.start * self.c_rs + cols.start) },
                    ds: self.c_rs,
                    rows: n,
                    cols: m,
                };
                // SAFETY: `isa` is this CPU's; as below, for the bands it does.
                j0 = unsafe { isa.run(t) };
            }
            for j in j0..n {
                for r in 0..m {
                    // SAFETY: element `(rows.start + r, cols.start + j)` of `c` is in the
                    // planned block.
                    unsafe {
                        *self.c.add((rows.start + r) * self.c_rs + cols.start + j) = s[j * m + r]
                    };
                }
            }
        });
    }
}

/// Row-wise softmax gradient: `out = y · (dy - sum(dy · y))`.
#[allow(clippy::too_many_arguments)]
extern "C" fn lstmc_softmax_grad(
    y: *const f32,
    ys: u64,
    dy: *const f32,
    dys: u64,
    out: *mut f32,
    os: u64,
    rows: u64,
    cols: u64,
) {
    for r in 0..rows as usize {
        // SAFETY: as for `lstmc_softmax`; the three rows are distinct arena or input slots.
        let (y, dy, o) = unsafe {
            (
                std::slice::from_raw_parts(y.add(r * ys as usize), cols as usize),
                std::slice::from_raw_parts(dy.add(r * dys as usize), cols as usize),
                std::slice::from_raw_parts_mut(out.add(r * os as usize), cols as usize),
            )
        };
        crate::jit::host::softmax_grad_row(y, dy, o);
    }
}

/// The loss of `rows` rows and its gradient (see [`crate::jit::host::loss_rows`]); the
/// loss goes to `out[0]`.
#[allow(clippy::too_many_arguments)]
extern "C" fn lstmc_loss(
    code: u64,
    y: *const f32,
    ys: u64,
    t: *const f32,
    ts: u64,
    dy: *mut f32,
    dys: u64,
    rows: u64,
    cols: u64,
    out: *mut f32,
) {
    let (rows, cols) = (rows as usize, cols as usize);
    let span = |stride: u64| (rows.max(1) - 1) * stride as usize + cols;
    // SAFETY: called by generated code with pointers and sizes from a bounds-checked plan;
    // `y`, `t`, `dy` and `out` are distinct slots (of the arena, or inputs for `t`).
    let (y, t, dy, out) = unsafe {
        (
            std::slice::from_raw_parts(y, span(ys)),
            std::slice::from_raw_parts(t, span(ts)),
            std::slice::from_raw_parts_mut(dy, span(dys)),
            &mut *out,
        )
    };
    *out = crate::jit::host::loss_rows(
        code as i64,
        y,
        ys as usize,
        t,
        ts as usize,
        dy,
        dys as usize,
        rows,
        cols,
    );
}

/// Whether this CPU runs the host's vector kernels ([`update::lstmc_update`],
/// [`activate::lstmc_activate`], [`lstmc_few_rows`]): it has AVX-512F, or AVX2 and FMA
/// ([`simd`]). Else generated code does their work with 128-bit vectors.
pub fn wide_updates() -> bool {
    Isa::detect().is_some()
}

/// Runs `f` over blocks of consecutive rows of `0..rows`, on the calling thread and the
/// [`pool`]'s workers when `threads > 1`: block `i` of `parts`, always the same block for
/// the same `rows` and `threads`, so that the row-split products and updates of a weight
/// ([`lstmc_few_rows`], [`update::lstmc_update`]) keep each block of it in one core's cache.
fn split_rows(
    rows: usize,
    threads: u64,
    handoff: Handoff,
    f: &(dyn Fn(usize, std::ops::Range<usize>) + Sync),
) {
    let parts = row_parts(rows, threads);
    let step = rows.div_ceil(parts);
    pool::run(parts, handoff, &|i| {
        f(i, (i * step).min(rows)..((i + 1) * step).min(rows))
    });
}

/// How many blocks [`split_rows`] makes.
fn row_parts(rows: usize, threads: u64) -> usize {
    pool::parts(threads as usize).min(rows).max(1)
}

/// Products with few rows (batch 1 and its gradients), 16 or 8 lanes at a time, where the
/// GEMM's packing and blocking cost more than the arithmetic: `code` 0 is
/// `c (m×n) = a (m×k) · w (k×n)`; 1 is `c (m×n) = a (m×k) · wᵀ` with `w` of `n×k`;
/// 2 is `c (k×n) = aᵀ · w` with `a` of `m×k` and `w` of `m×n`; 3 is code 0 split
/// between threads by columns instead of by rows of `w`. Rows are `*_rs` elements apart.
/// Emitted only when [`wide_updates`] holds (the CPU has AVX-512F, or AVX2 and FMA).
#[allow(clippy::too_many_arguments)]
extern "C" fn lstmc_few_rows(
    code: u64,
    m: u64,
    n: u64,
    k: u64,
    a: *const f32,
    a_rs: u64,
    w: *const f32,
    w_rs: u64,
    c: *mut f32,
    c_rs: u64,
    threads: u64,
) {
    let p = FewRows {
        m: m as usize,
        n: n as usize,
        k: k as usize,
        a,
        a_rs: a_rs as usize,
        w,
        w_rs: w_rs as usize,
        c,
        c_rs: c_rs as usize,
    };
    // Split by rows of `w` (and of `c` for code 2), as the weight's update is: code 0
    // sums over them, so its parts write partial sums, added up after (in `scratch`).
    // Code 3 splits by columns, in whole vectors: each part writes its columns of `c`,
    // summed in the same order as on one thread, and nothing is added up after; it is
    // for weights that no update splits by rows (a forward function's).
    let (m, n) = (p.m, p.n);
    let rows = match code {
        1 => p.n,
        3 => p.n.div_ceil(16),
        _ => p.k,
    };
    let parts = row_parts(rows, threads);
    // The partial sums' buffer, kept by the calling thread from call to call (the
    // tutorial's step makes seven of these calls): every part writes all of its `m × n`,
    // so old values are never read.
    let mut scratch = PARTIALS.take();
    scratch.resize(if code == 0 { (parts - 1) * m * n } else { 0 }, 0.0);
    let partial = scratch.as_mut_ptr() as usize;
    let isa = Isa::detect().expect("generated code calls lstmc_few_rows only with host vectors");
    split_rows(rows, threads, Handoff::WhenNear, &|i, block| {
        let part = if code == 0 && i > 0 {
            // SAFETY: part `i >= 1` has its own `m × n` of `scratch`.
            let c = unsafe { (partial as *mut f32).add((i - 1) * m * n) };
            FewRows {
                c,
                c_rs: n,
                ..p.rows_of_w(code, block)
            }
        } else {
            p.rows_of_w(code, block)
        };
        // SAFETY: generated code calls this only when the CPU has host vectors (`isa`),
        // with pointers and sizes from a bounds-checked plan; `c` is a slot distinct from
        // `a` and `w`, and the parts write disjoint blocks of it (or their own partial
        // sums).
        unsafe { isa.run(FewRowsPart { code, part }) }
    });
    if m * n > 0 {
        for partial in scratch.chunks(m * n) {
            for r in 0..m {
                for (j, &v) in partial[r * n..(r + 1) * n].iter().enumerate() {
                    // SAFETY: `c[r, j]` of the planned `m × n` result.
                    unsafe { *p.c.add(r * p.c_rs + j) += v };
                }
            }
        }
    }
    PARTIALS.set(scratch);
}

/// How many rows ahead [`FewRows::times`] asks for its block of `w`. W2's forward (four
/// products of 1 × 128 · 128 × 512 from L2) took 14.1 µs with 4 or 8 rows, against
/// 16.1–16.2 µs without (alternating runs, Zen 2, 2026-12-05), its epoch 3–3.5% less;
/// with 2 or 16, no better.
const PREFETCH_ROWS: usize = 4;

thread_local! {
    /// [`lstmc_few_rows`]'s partial sums.
    static PARTIALS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The operands of [`lstmc_few_rows`].
#[derive(Clone, Copy)]
struct FewRows {
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: usize,
    w: *const f32,
    w_rs: usize,
    c: *mut f32,
    c_rs: usize,
}

// SAFETY: the parts of a split product read `a` and `w` and write disjoint blocks of `c`
// (or their own partial sums).
unsafe impl Sync for FewRows {}

impl FewRows {
    /// The part of the product that reads rows `block` of `w` (code 0: a partial sum
    /// over them; 1: those elements of each row of `c`; 2: those rows of `c`), or for
    /// code 3 its vectors of columns `block` (those columns of `w` and `c`).
    fn rows_of_w(&self, code: u64, block: std::ops::Range<usize>) -> FewRows {
        let len = block.len();
        // SAFETY (of the offsets): `block` lies within the rows of `w` (and of `c` for 2),
        // or for 3 its columns, clamped to `n`, within the columns of `w` and `c`.
        unsafe {
            match code {
                0 => FewRows {
                    k: len,
                    a: self.a.add(block.start),
                    w: self.w.add(block.start * self.w_rs),
                    ..*self
                },
                1 => FewRows {
                    n: len,
                    w: self.w.add(block.start * self.w_rs),
                    c: self.c.add(block.start),
                    ..*self
                },
                3 => {
                    let [first, end] = [block.start, block.end].map(|v| (16 * v).min(self.n));
                    FewRows {
                        n: end - first,
                        w: self.w.add(first),
                        c: self.c.add(first),
                        ..*self
                    }
                }
                _ => FewRows {
                    k: len,
                    a: self.a.add(block.start),
                    c: self.c.add(block.start * self.c_rs),
                    ..*self
                },
            }
        }
    }
}

/// One part of [`lstmc_few_rows`]: `part`'s product of kind `code`.
struct FewRowsPart {
    code: u64,
    part: FewRows,
}

impl VecKernel for FewRowsPart {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self, s: S) {
        // SAFETY: the caller's: the CPU has `S`'s set, and the part's operands lie in
        // the planned slots.
        unsafe {
            match self.code {
                0 | 3 => self.part.times(s),
                1 => self.part.times_transposed(s),
                _ => self.part.transposed_times(s),
            }
        }
    }
}

impl FewRows {
    /// `c = a · w`: per row of `a`, blocks of 8 vectors of `c`'s columns, accumulated
    /// over `k` in order (one fused multiply-add per term).
    ///
    /// # Safety
    /// The CPU has `S`'s set; the operands lie in the planned slots.
    #[inline(always)]
    unsafe fn times<S: Simd>(&self, s: S) {
        let block = 8 * S::LANES;
        for r in 0..self.m {
            let mut j = 0;
            while self.n - j >= block {
                // SAFETY: columns `j..j + block` lie within the rows (`n - j >= block`).
                unsafe { self.times_block::<S, 8>(s, r, j, [S::LANES; 8]) };
                j += block;
            }
            while j < self.n {
                // SAFETY: the length stops at `n`.
                unsafe { self.times_block::<S, 1>(s, r, j, [(self.n - j).min(S::LANES)]) };
                j += S::LANES;
            }
        }
    }

    /// `V` vectors of row `r` of `c`, from column `j`, of `lens` lanes each.
    #[inline(always)]
    unsafe fn times_block<S: Simd, const V: usize>(
        &self,
        s: S,
        r: usize,
        j: usize,
        lens: [usize; V],
    ) {
        // SAFETY: row `r` of `a` has `k` elements, rows `0..k` of `w` and row `r` of `c`
        // have the columns under `lens` (see the callers); the CPU has `S`'s set.
        unsafe {
            let mut acc = [s.zero(); V];
            let arow = self.a.add(r * self.a_rs);
            for i in 0..self.k {
                let x = s.splat(*arow.add(i));
                let wrow = self.w.add(i * self.w_rs + j);
                // The rows of a block are `w_rs` apart, a stride that the hardware's
                // prefetchers left to run at about 25 of L2's 32 bytes a cycle.
                #[cfg(target_arch = "x86_64")]
                if V == 8 && i + PREFETCH_ROWS < self.k {
                    let ahead = wrow.add(PREFETCH_ROWS * self.w_rs) as *const i8;
                    for line in 0..(V * S::LANES * 4).div_ceil(64) {
                        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                            ahead.add(64 * line),
                        );
                    }
                }
                for v in 0..V {
                    let wv = s.load_n(wrow.add(S::LANES * v), lens[v]);
                    acc[v] = s.fma(x, wv, acc[v]);
                }
            }
            let crow = self.c.add(r * self.c_rs + j);
            for v in 0..V {
                s.store_n(crow.add(S::LANES * v), lens[v], acc[v]);
            }
        }
    }

    /// `c = a · wᵀ`: each element the dot product of a row of `a` and a row of `w`, eight
    /// rows of `w` at a time, in a vector of partial sums each: eight chains of
    /// multiply-adds keep two FMA ports of four cycles' latency busy, four did not (W2's
    /// epoch at one thread 6–8% slower with four on AVX-512, alternating runs). The same
    /// sums in the same order either way.
    ///
    /// # Safety
    /// The CPU has `S`'s set; the operands lie in the planned slots.
    #[inline(always)]
    unsafe fn times_transposed<S: Simd>(&self, s: S) {
        for r in 0..self.m {
            let mut i = 0;
            while self.n - i >= 8 {
                // SAFETY: rows `i..i + 8` of `w` exist (`n - i >= 8`).
                unsafe { self.dots::<S, 8>(s, r, i) };
                i += 8;
            }
            while i < self.n {
                // SAFETY: row `i` of `w` exists.
                unsafe { self.dots::<S, 1>(s, r, i) };
                i += 1;
            }
        }
    }

    /// `c[r, i..i + Q]`: dot products of row `r` of `a` with rows `i..i + Q` of `w`.
    #[inline(always)]
    unsafe fn dots<S: Simd, const Q: usize>(&self, s: S, r: usize, i: usize) {
        // SAFETY: row `r` of `a` and rows `i..i + Q` of `w` have `k` elements, read in
        // vectors that stop at `k`; `c[r, i + q]` is an element of `c`; the CPU has `S`'s
        // set.
        unsafe {
            let mut acc = [s.zero(); Q];
            let arow = self.a.add(r * self.a_rs);
            let mut j = 0;
            while j < self.k {
                let len = (self.k - j).min(S::LANES);
                let av = s.load_n(arow.add(j), len);
                for (q, acc) in acc.iter_mut().enumerate() {
                    let wv = s.load_n(self.w.add((i + q) * self.w_rs + j), len);
                    *acc = s.fma(av, wv, *acc);
                }
                j += S::LANES;
            }
            for (q, acc) in acc.iter().enumerate() {
                *self.c.add(r * self.c_rs + i + q) = s.sum(*acc);
            }
        }
    }

    /// `c = aᵀ · w`: row `i` of `c` is the sum over the `m` rows of `a[t, i] · w[t, :]`,
    /// in order of `t`.
    ///
    /// # Safety
    /// The CPU has `S`'s set; the operands lie in the planned slots.
    #[inline(always)]
    unsafe fn transposed_times<S: Simd>(&self, s: S) {
        for i in 0..self.k {
            let mut j = 0;
            while j < self.n {
                let len = (self.n - j).min(S::LANES);
                // SAFETY: `a[t, i]` and the `len` columns of row `t` of `w` and row `i`
                // of `c` from `j` are elements of their matrices (`t < m`, `i < k`,
                // `j + len <= n`).
                unsafe {
                    let mut acc = s.zero();
                    for t in 0..self.m {
                        let x = s.splat(*self.a.add(t * self.a_rs + i));
                        let wv = s.load_n(self.w.add(t * self.w_rs + j), len);
                        acc = s.fma(x, wv, acc);
                    }
                    s.store_n(self.c.add(i * self.c_rs + j), len, acc);
                }
                j += S::LANES;
            }
        }
    }
}

/// An outlined kernel (see [`super::codegen::Kernel`]): its operands' addresses and a
/// range of rows.
type Kernel = unsafe extern "C" fn(*const *mut f32, u64, u64);

/// Runs an outlined kernel over `rows` rows, split between the calling thread and the
/// [`pool`]'s workers in blocks of consecutive rows ([`split_rows`]).
extern "C" fn lstmc_rows(kernel: *const u8, operands: *const *mut f32, rows: u64, threads: u64) {
    // SAFETY: generated code passes the address of a function it defined with the
    // signature `Kernel` names (`codegen::kernel_signature`).
    let kernel = unsafe { std::mem::transmute::<*const u8, Kernel>(kernel) };
    let call = Call { kernel, operands };
    split_rows(rows as usize, threads, Handoff::Always, &|_, block| {
        if !block.is_empty() {
            call.rows(block.start as u64, block.end as u64)
        }
    });
}

/// A kernel and its operands, shared by the parts of [`lstmc_rows`].
struct Call {
    kernel: Kernel,
    operands: *const *mut f32,
}

// SAFETY: the parts only read the operand table and write disjoint rows.
unsafe impl Sync for Call {}

impl Call {
    fn rows(&self, first: u64, end: u64) {
        // SAFETY: the operands are the planned slots of this kernel, valid for the whole
        // call of `lstmc_rows`; its parts write disjoint rows of the outputs.
        unsafe { (self.kernel)(self.operands, first, end) }
    }
}

/// Instruction `id` of a profiled function starts ([`super::profile::Profile::tick`]).
extern "C" fn lstmc_tick(profile: *const super::profile::Profile, id: u64) {
    // SAFETY: profiled code passes the address of the profile its `Compiled` keeps alive
    // as long as the code (`jit::compile`).
    unsafe { &*profile }.tick(id)
}

/// The host symbols generated code may call, for `JITBuilder::symbol`.
pub fn host_symbols() -> [(&'static str, *const u8); 15] {
    [
        ("lstmc_pack", packed::lstmc_pack as *const u8),
        ("lstmc_gemm_packed", packed::lstmc_gemm_packed as *const u8),
        ("lstmc_sum_rows", lstmc_sum_rows as *const u8),
        ("lstmc_copy", lstmc_copy as *const u8),
        ("lstmc_transpose", lstmc_transpose as *const u8),
        ("lstmc_few_rows", lstmc_few_rows as *const u8),
        ("lstmc_rows", lstmc_rows as *const u8),
        ("lstmc_update", update::lstmc_update as *const u8),
        ("lstmc_loss", lstmc_loss as *const u8),
        ("lstmc_gemm", lstmc_gemm as *const u8),
        ("lstmc_softmax", lstmc_softmax as *const u8),
        ("lstmc_gemm_strided", lstmc_gemm_strided as *const u8),
        ("lstmc_softmax_grad", lstmc_softmax_grad as *const u8),
        ("lstmc_tick", lstmc_tick as *const u8),
        ("lstmc_activate", activate::lstmc_activate as *const u8),
    ]
}

#[cfg(test)]
mod split_tests {
    use super::split_part;

    /// The parts of a split cover `0..len` in order, each but the last a multiple of
    /// `align` (or the end of `len`), and none of one row or column unless the whole is
    /// one.
    #[test]
    fn splits_cover_the_whole_without_a_lone_row() {
        for len in 1..200 {
            for parts in 2..5 {
                for align in [8, 16] {
                    let all: Vec<_> = (0..parts)
                        .map(|i| split_part(len, parts, align, i))
                        .collect();
                    let case = format!("{len} in {parts} by {align}: {all:?}");
                    assert_eq!(all[0].start, 0, "{case}");
                    assert_eq!(all[parts - 1].end, len, "{case}");
                    for w in all.windows(2) {
                        assert_eq!(w[0].end, w[1].start, "{case}");
                        assert!(w[0].len() % align == 0 || w[0].end == len, "{case}");
                    }
                    if len > 1 {
                        assert!(all.iter().all(|p| p.len() != 1), "{case}");
                    }
                }
            }
        }
    }
}
