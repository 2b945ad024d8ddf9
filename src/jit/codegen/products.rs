//! Matrix products: the host GEMM above the crossover, the host's few-row vector kernels
//! at batch 1 (where the CPU has AVX-512F, or AVX2 and FMA), and generated `f32x4` code
//! for small ones.

use super::{math, Emitter, Mat};
use crate::ir::IrError;
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_frontend::Variable;

/// Products of fewer multiply-adds stay in generated code even with few rows: below
/// this, a host call costs more than Cranelift's 128-bit vectors lose.
const FEW_ROWS_MIN: usize = 1 << 12;

/// `d · wᵀ` products of at most this many multiply-adds are generated ([`Emitter::dot_rows`]).
pub(super) const DOT_ROWS_MAX: usize = 1 << 12;

impl Emitter<'_, '_, '_> {
    /// `c = a · b` on the host GEMM, with each operand's (pointer, row stride, column
    /// stride) in elements, so that either may be read transposed.
    pub(super) fn gemm_strided(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        a: (Value, i64, i64),
        b: (Value, i64, i64),
        c: &Mat,
    ) -> Result<(), IrError> {
        let threads = self.host_threads(m * n * k);
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

    /// The threads a host product of `work` multiply-adds may use.
    fn host_threads(&self, work: usize) -> usize {
        if work >= self.tuning.parallel_min {
            self.tuning.threads
        } else {
            1
        }
    }

    /// `c = a · w` with `a: m×k` and `w: k×n` packed in `p` (`Op::MatMulPacked`).
    pub(super) fn matmul_packed(&mut self, a: Mat, p: Mat, c: Mat) {
        let (m, k, n) = (a.rows, a.cols, c.cols);
        let threads = self.host_threads(m * n * k);
        let args = [
            self.imm(m as i64),
            self.imm(n as i64),
            self.imm(k as i64),
            a.ptr,
            self.imm(a.stride / 4),
            p.ptr,
            c.ptr,
            self.imm(c.stride / 4),
            self.imm(threads as i64),
        ];
        self.b.ins().call(self.hosts.gemm_packed, &args);
    }

    /// `c = a · w` with `a: m×k`, `w: k×n`.
    pub(super) fn matmul(&mut self, a: Mat, w: Mat, c: Mat) -> Result<(), IrError> {
        let (m, k, n) = (a.rows, a.cols, w.cols);
        // Split by rows of `w` where its update splits it so (see `lstmc_few_rows`), else
        // by columns, which sums as one thread does and adds no partial sums after.
        let code = if self.f.writes_inputs() { 0 } else { 3 };
        if self.few_rows(code, m, m, n, k, &a, &w, &c) {
            return Ok(());
        }
        let work = m * n * k;
        if work >= self.tuning.gemm_crossover {
            let threads = self.host_threads(work);
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
    /// product's `rows` (see [`super::Tuning::few_rows_max`]) are few and its work is large
    /// enough; returns whether it did.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn few_rows(
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
    pub(super) fn dot_rows(&mut self, d: Mat, w: Mat, c: Mat) -> Result<(), IrError> {
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
    pub(super) fn matmul_generated(
        &mut self,
        a: Mat,
        a_cs: i64,
        w: Mat,
        c: Mat,
    ) -> Result<(), IrError> {
        let (m, k, n) = (a.rows, a.cols, w.cols);
        self.counted(m, |e, r| {
            let arow = e.row(&a, r);
            let crow = e.row(&c, r);
            // Blocks of eight vectors, then the rest as one block of as many vectors (its
            // last one partial: c's rows have room, w's rows are padded), so that every
            // column's chain of multiply-adds runs beside the others: three blocks of one
            // vector, one after another, made a 128×12 Dense product (W2) wait on three
            // chains of 128 in a row.
            let blocks = n / 32;
            if blocks > 0 {
                e.counted(blocks, |e, jb| {
                    let off = e.b.ins().imul_imm_s(jb, 128);
                    e.dot_block(&a, a_cs, &w, arow, off, k, 8, types::F32X4, crow)
                })?;
            }
            let col = blocks * 32;
            if col < n {
                let off = e.imm((col * 4) as i64);
                let width = (n - col).div_ceil(4);
                e.dot_block(&a, a_cs, &w, arow, off, k, width, types::F32X4, crow)?;
            }
            Ok(())
        })
    }

    /// One block of `width` accumulators of `ty` (at byte offset `off` of the row) over all of `k`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dot_block(
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
                let fl = e.load_flags(&w);
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
