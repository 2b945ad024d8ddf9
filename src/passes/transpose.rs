//! Transposed weights: a time loop's `d · wᵀ` against a weight `w` defined outside
//! the loop (backpropagation through a recurrent kernel, at every step) becomes
//! `d · t` with `t = transpose(w)` computed once before the loop; so do the
//! products of a fully unrolled loop that read the same `w`.
//!
//! The host GEMM repacks an operand it reads transposed at every call: in W3's
//! training step that repacking took 13% of the time (`perf`), and reading a
//! contiguous transpose instead made the step 10% faster (W3 train 40.5 → 36.6 ms,
//! W5 31.3 → 28.2 ms at one thread, `lstmc bench --phase train`, alternating runs).
//! Batches of at most `FEW_ROWS` rows are left alone: their products run on
//! kernels that read `w` transposed as it is (W1, the tutorial's W2), and there the
//! transpose would cost more than it saves.
//!
//! The other way round for a wide weight ([`reads_weight_transposed`], W4's recurrent
//! kernel): a loop's `a · w` becomes `a · tᵀ` (`matmul_bt`) against the same one
//! transpose, which the backward loop, if any, reads as `d · t`.

use super::Options;
use crate::ir::{Block, Function, Inst, IrError, Op, Value};
use std::collections::HashSet;

/// Products with at most this many rows of `d` keep reading `w` transposed (the
/// few-row kernels' limit, `Tuning::few_rows_max`).
const FEW_ROWS: usize = 4;

/// Products of fewer multiply-adds per step keep reading `w` transposed.
const MIN_WORK: usize = 1 << 15;

/// Runs the pass on every block, outer blocks first.
pub fn run(f: &mut Function, _: &Options) -> Result<(), IrError> {
    for b in f.reachable_blocks() {
        transpose_in(f, b)?;
    }
    Ok(())
}

/// A weight that qualifying products read: the position in a block of its first
/// reader, how often it is read (a loop's steps count each), and the products.
pub(super) struct Site {
    pub weight: Value,
    pub pos: usize,
    pub reads: usize,
    pub readers: Vec<Inst>,
}

/// In block `b`: the products that `qualifies`, directly in `b` or directly in the body
/// of a loop of `b` (reading a weight, their second operand, from outside that body),
/// grouped by weight, from the last position in `b` back.
pub(super) fn sites(
    f: &Function,
    b: Block,
    qualifies: impl Fn(&Function, Inst) -> bool,
) -> Vec<Site> {
    let mut sites: Vec<Site> = Vec::new();
    let mut note = |weight: Value, pos: usize, reads: usize, i: Inst| match sites
        .iter_mut()
        .find(|s| s.weight == weight)
    {
        Some(s) => {
            s.reads += reads;
            s.readers.push(i);
        }
        None => sites.push(Site {
            weight,
            pos,
            reads,
            readers: vec![i],
        }),
    };
    for (pos, &i) in f.block(b).insts.iter().enumerate() {
        match f.inst(i).op {
            Op::MatMulBT | Op::MatMul if qualifies(f, i) => note(f.inst(i).args[1], pos, 1, i),
            Op::Loop { body, steps, .. } => {
                let outside: HashSet<Value> = f.free_uses(body).into_iter().collect();
                for &j in &f.block(body).insts {
                    let w = f.inst(j).args.get(1).copied();
                    if w.is_some_and(|w| outside.contains(&w)) && qualifies(f, j) {
                        note(f.inst(j).args[1], pos, steps, j);
                    }
                }
            }
            _ => {}
        }
    }
    // Inserting from the last position back keeps earlier positions valid.
    sites.sort_by_key(|s| std::cmp::Reverse(s.pos));
    sites
}

/// In block `b`: a weight that qualifying `matmul_bt`s read more than once (in a loop,
/// or at several unrolled steps) is transposed once, before its first reader, and they
/// all read the transpose.
fn transpose_in(f: &mut Function, b: Block) -> Result<(), IrError> {
    for Site {
        weight,
        pos,
        reads,
        readers,
    } in sites(f, b, qualifies)
    {
        if reads < 2 {
            continue;
        }
        let t = f.make(Op::Transpose, vec![weight], f.inst(readers[0]).origin)?;
        f.blocks[b.index()].insts.insert(pos, t);
        let tv = f.result(t);
        for i in readers {
            let inst = &mut f.insts[i.index()];
            inst.op = match inst.op {
                Op::MatMul => Op::MatMulBT,
                _ => Op::MatMul,
            };
            inst.args[1] = tv;
        }
    }
    Ok(())
}

/// Whether a `matmul_bt` is large enough, and has enough rows, to read a transpose
/// (and is not one that [`reads_weight_transposed`] keeps), or a `matmul` is one that
/// it turns into a `matmul_bt`.
fn qualifies(f: &Function, i: Inst) -> bool {
    let d = f.inst(i);
    let (ds, ws) = (f.shape(d.args[0]), f.shape(d.args[1]));
    let inner = ds.last().copied().unwrap_or(1);
    let rows: usize = ds[..ds.len().saturating_sub(1)].iter().product();
    match d.op {
        // (rows × k) · (k × n)
        Op::MatMul => ws.len() == 2 && reads_weight_transposed(rows, inner, ws[1]),
        // (rows × k) · (n × k)ᵀ
        Op::MatMulBT => {
            let n = ws.first().copied().unwrap_or(1);
            rows > FEW_ROWS
                && rows * inner * n >= MIN_WORK
                && !reads_weight_transposed(rows, inner, n)
        }
        _ => false,
    }
}

/// Whether a product `(rows × k) · (k × n)` against a weight is faster with the weight
/// stored transposed (column-major), the product then written column by column and
/// transposed into place (`lstmc_gemm_strided`): for a wide weight and a batch of rows,
/// the `gemm` crate then streams the weight once instead of repacking it at every call.
/// W4's step, 64 × 512 · 512 × 2048: 1.27 ms a step as a `matmul`, 0.93–0.98 ms so
/// (0.55 ms against 1.2–1.4 for the 32-row blocks of two threads); W3's 32 × 256 · 256 ×
/// 1024 and W5's were 10–15% slower so, and W4's backward 64 × 2048 · 2048 × 512
/// 12% faster but a transpose before its loop either way (measured standalone with the
/// crate, 2026-12-05).
pub fn reads_weight_transposed(rows: usize, k: usize, n: usize) -> bool {
    rows >= 16 && k >= 512 && n >= 2048
}
