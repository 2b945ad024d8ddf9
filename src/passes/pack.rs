//! Packed weights: a loop's `a · w` (a recurrent step's `h · U`) or `d · wᵀ` (its
//! backward step's `d · Uᵀ`) against a weight `w` defined outside the loop becomes
//! `matmul_packed(a, p)` with `p = pack(w)` (or `pack.transposed(w)`) computed once
//! before the loop; so do the products of a fully unrolled loop that read the same `w`,
//! and a product of many rows and long enough sums outside loops (the input projection
//! of all steps, from 32 input features up).
//!
//! The packed layout ([`Op::Pack`]) is the one the host kernel reads
//! (`jit::native::packed`): panels of 24 columns, each panel's rows contiguous, so that
//! a panel stays in the L1 cache while the kernel runs every row block of `a` over it.
//! The `gemm` crate repacks or streams the weight at every step instead. Alternating
//! runs on Zen 2 (2026-12-05): see the commit that added this pass.
//!
//! Only products that go to the host's GEMM are packed: more rows than the few-row
//! kernels take, at least [`Options::pack_min`] multiply-adds, and columns that pad
//! to whole panels by at most a quarter (the kernel computes whole panels), against a weight
//! that they read for `ROWS_MIN` (32) rows or more in all, so that the copy costs at most
//! a few percent of the multiplications. Code generation turns the pass off
//! (`pack_min = usize::MAX`) where the CPU lacks the packed kernel.

use super::transpose::{sites, Site};
use super::Options;
use crate::ir::{Block, Function, Inst, IrError, Op, PANEL};

/// Products with at most this many rows keep their weight as it is: they run on the
/// few-row kernels (`Tuning::few_rows_max`), which read it in place.
const FEW_ROWS: usize = 4;

/// A weight is packed when its products read it for at least this many rows of `a` in
/// all (over a loop's steps): packing reads and writes the weight once, about what a
/// product of 4 rows costs, which then runs on 8 blocks of 4 rows or more.
const ROWS_MIN: usize = 32;

/// A weight read once (outside loops) is packed only for products that sum at least
/// this many terms: the kernel writes each row's 24 columns of a panel per `k`
/// multiply-adds, and for short sums into a large result those writes bound it. An LSTM
/// 256's input projection of 32×50 rows (`lstmc bench --model --profile`, Zen 2,
/// 2026-12-05, after the kernel's stores stopped going through `memcpy`): 16 features
/// 1.80 ms packed against 1.04–1.08 ms on the `gemm` crate; 32 features 1.21–1.36
/// against 1.41–1.43 ms; 64 (W3's) 2.29 against 2.49 ms. W4's (6400×512 · 512×2048)
/// 145–150 ms against 154 ms.
const ONCE_INNER_MIN: usize = 32;

/// Runs the pass on every block, outer blocks first.
pub fn run(f: &mut Function, options: &Options) -> Result<(), IrError> {
    for b in f.reachable_blocks() {
        for transposed in [false, true] {
            pack_in(f, b, transposed, options.pack_min)?;
        }
    }
    Ok(())
}

/// In block `b`: a weight that qualifying products (`matmul`s, or `matmul_bt`s when
/// `transposed`) read for `ROWS_MIN` rows or more in all (and, when they read it once,
/// over `ONCE_INNER_MIN` terms or more) is packed once, before its first reader, and
/// they all read the packed weight.
fn pack_in(f: &mut Function, b: Block, transposed: bool, min: usize) -> Result<(), IrError> {
    // A product's rows of `a`, its inner dimension and its columns.
    let dims = |f: &Function, i: Inst| {
        let d = f.inst(i);
        let (a, w) = (f.shape(d.args[0]), f.shape(d.args[1]));
        let (Some((&inner, lead)), &[wr, wc]) = (a.split_last(), w) else {
            return None;
        };
        Some((
            lead.iter().product::<usize>(),
            inner,
            if transposed { wr } else { wc },
        ))
    };
    let op = if transposed { Op::MatMulBT } else { Op::MatMul };
    let qualifies = |f: &Function, i: Inst| {
        f.inst(i).op == op
            && dims(f, i).is_some_and(|(rows, inner, cols)| {
                rows > FEW_ROWS
                    && rows.saturating_mul(inner).saturating_mul(cols) >= min
                    && cols.next_multiple_of(PANEL) * 4 <= cols * 5
            })
    };
    for Site {
        weight,
        pos,
        reads,
        readers,
    } in sites(f, b, qualifies)
    {
        let (rows, inner) = dims(f, readers[0]).map_or((0, 0), |d| (d.0, d.1));
        if rows.saturating_mul(reads) < ROWS_MIN || (reads < 2 && inner < ONCE_INNER_MIN) {
            continue;
        }
        let &[wr, wc] = f.shape(weight) else {
            return Err(IrError(format!("pack: weight {weight} is not a matrix")));
        };
        let cols = if transposed { wr } else { wc };
        let p = f.make(
            Op::Pack { transposed },
            vec![weight],
            f.inst(readers[0]).origin,
        )?;
        f.blocks[b.index()].insts.insert(pos, p);
        let pv = f.result(p);
        for i in readers {
            let inst = &mut f.insts[i.index()];
            inst.op = Op::MatMulPacked { cols };
            inst.args[1] = pv;
        }
    }
    Ok(())
}
