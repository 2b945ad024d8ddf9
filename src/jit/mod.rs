//! The JIT: optimized IR → buffer plan → Cranelift → native code.
//!
//! [`compile`] runs the passes on a lowered forward function, plans its
//! buffers, generates one native function for it and returns it with the
//! plan, so that the runtime can lay out inputs and read outputs.

pub mod buf;
pub mod codegen;
pub mod host;
pub mod math;
// The one module with `unsafe` code (the crate denies it everywhere else).
#[allow(unsafe_code)]
mod native;
pub mod plan;
pub mod profile;

pub use buf::Buf;
pub use codegen::Tuning;
pub(crate) use native::fork_join;
pub use native::{set_placement, NativeCode, Placement};

use crate::error::{Error, Result};
use crate::ir::{verify::verify, Function};
use crate::passes;
use cranelift_codegen::ir::{types, AbiParam, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use std::time::{Duration, Instant};

/// The most working memory (the arena) one compiled function may plan: refused up front
/// rather than failing to allocate.
pub const MAX_ARENA_BYTES: usize = 16 << 30;

/// How to compile.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// The passes' knobs.
    pub passes: passes::Options,
    /// Code generation's knobs.
    pub tuning: Tuning,
    /// Keep the Cranelift IR and machine code text (for `lstmc asm`).
    pub keep_text: bool,
    /// Count the time of every instruction of the function ([`profile`]; for `lstmc
    /// bench --profile`). Profiled code runs slower.
    pub profile: bool,
}

impl Options {
    /// The passes' knobs as [`compile`] runs them on this CPU: no packed weights where
    /// code generation does not multiply by them ([`Tuning::packed_weights`]).
    pub fn pass_options(&self) -> passes::Options {
        let mut passes = self.passes;
        if !self.tuning.on_this_cpu().packed_weights {
            passes.pack_min = usize::MAX;
        }
        passes
    }
}

/// A compiled forward function.
#[derive(Debug)]
pub struct Compiled {
    /// The optimized IR it was generated from.
    pub func: Function,
    /// Where every value lives.
    pub plan: plan::Plan,
    /// The native code.
    pub code: NativeCode,
    /// Cranelift IR, when asked for.
    pub clif: Option<String>,
    /// Machine code after register allocation, when asked for.
    pub machine: Option<String>,
    /// Time spent in passes, planning and code generation.
    pub compile_time: Duration,
    /// The time per instruction, when compiled to count it ([`Options::profile`]).
    pub profile: Option<std::sync::Arc<profile::Profile>>,
}

fn isa() -> Result<std::sync::Arc<dyn cranelift_codegen::isa::TargetIsa>> {
    let mut flags = settings::builder();
    let set = |flags: &mut settings::Builder, k: &str, v: &str| {
        flags
            .set(k, v)
            .map_err(|e| Error::Internal(format!("cranelift flag {k}: {e}")))
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    // Frames larger than a page (the two-pass kernels' 32 KB scratch row, the operand
    // tables of outlined kernels) touch each page on entry, so that a thread whose
    // stack is too small faults on its guard page instead of writing past it.
    set(&mut flags, "enable_probestack", "true")?;
    set(&mut flags, "probestack_strategy", "inline")?;
    let builder = cranelift_native::builder()
        .map_err(|e| Error::Internal(format!("this CPU is not supported by Cranelift: {e}")))?;
    builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| Error::Internal(format!("cranelift ISA: {e}")))
}

/// Optimizes a lowered forward function and compiles it to native code.
pub fn compile(mut func: Function, options: &Options) -> Result<Compiled> {
    let start = Instant::now();
    passes::optimize(&mut func, &options.pass_options(), None)?;
    verify(&func)?;
    let plan = plan::plan(&func)?;
    plan.check_bounds(&func)?;
    let bytes = plan.arena_len.saturating_mul(4);
    if bytes > MAX_ARENA_BYTES {
        return Err(Error::Usage(format!(
            "model `{}` needs {:.1} GiB of working memory at this batch size and length, more than lstmc allows ({} GiB); \
             use a smaller batch size",
            func.name,
            bytes as f64 / (1u64 << 30) as f64,
            MAX_ARENA_BYTES >> 30
        )));
    }

    let mut jb = JITBuilder::with_isa(isa()?, default_libcall_names());
    for (name, ptr) in native::host_symbols() {
        jb.symbol(name, ptr);
    }
    let mut module = JITModule::new(jb);
    let ptr = types::I64;
    let mut ctx = module.make_context();
    ctx.func.signature.params.push(AbiParam::new(ptr));
    ctx.func.signature.params.push(AbiParam::new(ptr));
    ctx.set_disasm(options.keep_text);
    let cl_err = |e: cranelift_module::ModuleError| Error::Internal(format!("cranelift: {e:?}"));
    let id = module
        .declare_function("forward", Linkage::Export, &ctx.func.signature)
        .map_err(cl_err)?;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    // The host functions generated code calls (`native.rs`), with their parameters: so
    // many 64-bit integers and pointers, then so many f32s.
    let imports: [(&str, usize, usize); 15] = [
        // (kind, y, ys, t, ts, dy, dys, rows, cols, out)
        ("lstmc_loss", 10, 0),
        // (m, n, k, a, lda, b, ldb, c, ldc, threads)
        ("lstmc_gemm", 10, 0),
        // (src, src_stride, dst, dst_stride, rows, cols)
        ("lstmc_softmax", 6, 0),
        // (m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, c_rs, threads)
        ("lstmc_gemm_strided", 12, 0),
        // (y, ys, dy, dys, out, os, rows, cols)
        ("lstmc_softmax_grad", 8, 0),
        // (code, w, ws, g, gs, d, d_rs, t, s1, s1s, s2, s2s, rows, cols, threads; rate, k0..k3)
        ("lstmc_update", 15, 5),
        // (kernel, operands, rows, threads)
        ("lstmc_rows", 4, 0),
        // (code, m, n, k, a, a_rs, w, w_rs, c, c_rs, threads)
        ("lstmc_few_rows", 11, 0),
        // (src, src_stride, dst, dst_stride, rows, cols)
        ("lstmc_copy", 6, 0),
        // (src, src_stride, dst, dst_stride, rows, cols)
        ("lstmc_transpose", 6, 0),
        // (src, src_stride, dst, rows, cols)
        ("lstmc_sum_rows", 5, 0),
        // (profile, instruction)
        ("lstmc_tick", 2, 0),
        // (kind, x, n, terms, t0, t1, t2, t3, ahead)
        ("lstmc_activate", 9, 0),
        // (b, b_rs, b_cs, k, n, dst, threads)
        ("lstmc_pack", 7, 0),
        // (m, n, k, a, a_rs, p, c, c_rs, threads)
        ("lstmc_gemm_packed", 9, 0),
    ];
    let mut ids = Vec::with_capacity(imports.len());
    for (name, ints, floats) in imports {
        let mut sig = module.make_signature();
        sig.params
            .extend(std::iter::repeat_n(AbiParam::new(types::I64), ints));
        sig.params
            .extend(std::iter::repeat_n(AbiParam::new(types::F32), floats));
        ids.push(
            module
                .declare_function(name, Linkage::Import, &sig)
                .map_err(cl_err)?,
        );
    }
    let hosts = |module: &mut JITModule, func: &mut cranelift_codegen::ir::Function| {
        let [loss, gemm, softmax, gemm_strided, softmax_grad, update, rows, few_rows, copy, transpose, sum_rows, tick, activate, pack, gemm_packed] =
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
                .map(|i| module.declare_func_in_func(ids[i], func));
        codegen::Hosts {
            loss,
            gemm,
            softmax,
            gemm_strided,
            softmax_grad,
            update,
            rows,
            few_rows,
            copy,
            transpose,
            sum_rows,
            tick,
            activate,
            pack,
            gemm_packed,
        }
    };
    let mut fctx = FunctionBuilderContext::new();
    let tuning = options.tuning.on_this_cpu();
    let mut clif = options.keep_text.then(String::new);
    let mut machine = options.keep_text.then(String::new);
    // Defines the function in `ctx` as `id`, keeping its text when asked.
    let mut define = |module: &mut JITModule, ctx: &mut cranelift_codegen::Context, id| {
        if let Some(text) = clif.as_mut() {
            text.push_str(&ctx.func.display().to_string());
        }
        module.define_function(id, ctx).map_err(cl_err)?;
        if let Some(text) = machine.as_mut() {
            let code = ctx.compiled_code().and_then(|c| c.vcode.clone());
            text.push_str(&format!("; function {}\n", ctx.func.name));
            text.push_str(&code.unwrap_or_default());
        }
        module.clear_context(ctx);
        Ok::<(), Error>(())
    };
    let profile = options
        .profile
        .then(|| std::sync::Arc::new(profile::Profile::new(func.insts.len())));
    let kernels = {
        let h = hosts(&mut module, &mut ctx.func);
        let mut outline = codegen::Outline {
            module: &mut module,
            kernels: Vec::new(),
        };
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        // The profile's address, for the code to pass to `lstmc_tick`: `Compiled` keeps
        // the profile as long as the code.
        let counts = profile.as_ref().map(|p| std::sync::Arc::as_ptr(p) as i64);
        codegen::emit(&func, &plan, &tuning, &mut b, h, &mut outline, counts)?;
        b.finalize(outline.module.target_config());
        outline.kernels
    };
    define(&mut module, &mut ctx, id)?;
    // The kernels outlined to run on several threads.
    for kernel in &kernels {
        ctx.func.signature = codegen::kernel_signature(&module);
        ctx.func.name = UserFuncName::user(0, kernel.id.as_u32());
        ctx.set_disasm(options.keep_text);
        let h = hosts(&mut module, &mut ctx.func);
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        codegen::emit_kernel(&func, &plan, &tuning, &mut b, h, kernel)?;
        b.finalize(module.target_config());
        define(&mut module, &mut ctx, kernel.id)?;
    }
    module.finalize_definitions().map_err(cl_err)?;
    let writes_inputs = func.writes_inputs();
    let code = NativeCode::new(
        module,
        id,
        plan.input_lens.clone(),
        plan.arena_len,
        writes_inputs,
    );
    Ok(Compiled {
        func,
        plan,
        code,
        clif,
        machine,
        compile_time: start.elapsed(),
        profile,
    })
}
