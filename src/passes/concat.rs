//! Sums of `pad_last`s become one `concat_last`.
//!
//! Autodiff turns the adjoint of a value split into gates (`slice_last` of the
//! fused pre-activations) into a zero-padded full-width copy of each gate's
//! adjoint, summed: for an LSTM step, four zero-filled `[B, 4u]` buffers and three
//! full-width additions. The pieces never overlap, so the sum is a concatenation:
//! one write of each piece into its columns (and zeros where none lands).
//!
//! Every `add` whose operands are, recursively, `pad_last`s, `concat_last`s or
//! such sums, with column ranges that do not overlap, is rewritten in place into
//! a `concat_last` of the pieces; the pads and inner sums left unused go with
//! dead-code elimination.

use super::Options;
use crate::ir::{BinOp, Function, Op, Value};

/// The pieces `(first column, value)` that `v` is the zero-padded sum of, if it is one.
fn pieces(f: &Function, v: Value) -> Option<Vec<(usize, Value)>> {
    let i = f.def_inst(v)?;
    let d = f.inst(i);
    match &d.op {
        Op::PadLast { start, .. } => Some(vec![(*start, d.args[0])]),
        Op::ConcatLast { starts, .. } => Some(starts.iter().copied().zip(d.args.clone()).collect()),
        Op::Binary(BinOp::Add) => {
            let mut all = pieces(f, d.args[0])?;
            all.extend(pieces(f, d.args[1])?);
            let mut ranges: Vec<(usize, usize)> = all
                .iter()
                .map(|&(s, p)| (s, s + f.shape(p).last().copied().unwrap_or(0)))
                .collect();
            ranges.sort();
            ranges.windows(2).all(|w| w[0].1 <= w[1].0).then_some(all)
        }
        _ => None,
    }
}

/// Runs the pass, then dead-code elimination.
pub fn run(f: &mut Function, options: &Options) -> Result<(), crate::ir::IrError> {
    for b in f.reachable_blocks() {
        for i in f.block(b).insts.clone() {
            if f.inst(i).op != Op::Binary(BinOp::Add) {
                continue;
            }
            let r = f.inst(i).results[0];
            let Some(mut parts) = pieces(f, r) else {
                continue;
            };
            parts.sort_by_key(|&(s, _)| s);
            let total = f.shape(r).last().copied().unwrap_or(0);
            let d = &mut f.insts[i.index()];
            d.op = Op::ConcatLast {
                starts: parts.iter().map(|&(s, _)| s).collect(),
                total,
            };
            d.args = parts.into_iter().map(|(_, v)| v).collect();
        }
    }
    super::dce::run(f, options)
}
