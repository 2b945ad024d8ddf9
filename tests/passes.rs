//! The passes keep meaning: the interpreter gives the same numbers for the
//! lowered function and after every prefix of the pipeline, on every Keras
//! fixture and on random models. Golden files show each pass's effect.

mod common;

use common::random::random_model;
use common::*;
use lstmc::interp;
use lstmc::ir::{lower, verify::verify, Function, InputRole, OutputRole};
use lstmc::passes::{self, Options};
use ndarray::ArrayD;
use proptest::prelude::*;
use std::path::PathBuf;

/// Runs `f` with `x`, the weights, and zero or given states; returns every output by role.
fn run(
    f: &Function,
    x: &ArrayD<f64>,
    w: &lstmc::weights::Weights,
    states: &[ArrayD<f64>],
) -> Vec<(OutputRole, ArrayD<f64>)> {
    let mut s = states.iter();
    let inputs: Vec<ArrayD<f64>> = f
        .input_roles
        .iter()
        .map(|r| match r {
            InputRole::X => x.clone(),
            InputRole::Weight { layer, name } => w.get(*layer, name).unwrap().clone(),
            InputRole::State { .. } => s.next().unwrap().clone(),
            r => unreachable!("forward functions take no {r}"),
        })
        .collect();
    let outs = interp::run(f, &inputs).unwrap();
    f.outputs.iter().map(|(r, _)| r.clone()).zip(outs).collect()
}

fn states_for(f: &Function, fill: f64) -> Vec<ArrayD<f64>> {
    f.input_roles
        .iter()
        .zip(&f.block(f.entry).params)
        .filter(|(r, _)| matches!(r, InputRole::State { .. }))
        .map(|(_, &p)| ArrayD::from_elem(f.shape(p), fill))
        .collect()
}

fn check_all_prefixes(
    spec: &lstmc::model::ModelSpec,
    w: &lstmc::weights::Weights,
    x: &ArrayD<f64>,
    opts: &Options,
    what: &str,
) {
    let shapes = lstmc::reference::batch_shapes(spec, x.shape()).unwrap();
    let base = lower::lower(spec, shapes).unwrap();
    // Non-zero initial states, so that folding must not fire on stateful layers.
    let states = states_for(&base, 0.25);
    let want = run(&base, x, w, &states);
    for pass in passes::names() {
        let mut f = base.clone();
        passes::optimize(&mut f, opts, Some(pass)).unwrap_or_else(|e| panic!("{what}: {e}"));
        verify(&f).unwrap();
        let got = run(&f, x, w, &states);
        assert_eq!(got.len(), want.len());
        for ((r1, a), (r2, b)) in got.iter().zip(&want) {
            assert_eq!(r1, r2);
            assert_close(&format!("{what}, after {pass}, output {r1}"), a, b, 1e-12);
        }
    }
}

#[test]
fn every_fixture_interprets_identically_after_every_pass() {
    for name in fixture_names() {
        let fx = load(&name);
        let spec = fx.spec();
        let w = fx.weights(&spec);
        let x = array(&fx.batches()[0]["x"]);
        check_all_prefixes(&spec, &w, &x, &Options::default(), &name);
        // Force the other unrolling strategies too.
        let none = Options {
            full_unroll_max: 0,
            partial_unroll_max: 1,
            ..Options::default()
        };
        check_all_prefixes(&spec, &w, &x, &none, &format!("{name} (no unrolling)"));
        let partial = Options {
            full_unroll_max: 1,
            partial_unroll_max: 3,
            ..Options::default()
        };
        check_all_prefixes(
            &spec,
            &w,
            &x,
            &partial,
            &format!("{name} (partial unrolling)"),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    #[test]
    fn random_models_interpret_identically_after_every_pass(m in random_model(), full in 0..20usize, part in 1..6usize, pack in any::<bool>()) {
        let spec = m.spec();
        let w = m.weights(&spec);
        let x = m.inputs(&spec, 1).remove(0);
        let pack_min = if pack { 1 } else { usize::MAX };
        let opts = Options { full_unroll_max: full, partial_unroll_max: part, pack_min };
        check_all_prefixes(&spec, &w, &x, &opts, &m.text);
    }
}

/// Golden IR after a pass: `tests/golden/passes/MODEL.after-PASS.ir`, read and checked by hand.
#[test]
fn each_pass_matches_its_golden_file() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/passes");
    let cases = [
        ("seed_lstm", "fuse-gates"),
        ("seed_lstm", "hoist"),
        ("seed_lstm", "unroll"),
        ("seed_lstm", "fold"),
        ("seed_lstm", "dce"),
        ("seed_lstm", "fuse-elementwise"),
        ("gru_reset_before", "fuse-gates"),
        ("gru_reset_before", "fuse-elementwise"),
        ("lstm_stateful", "fold"),
        ("lstm_long", "unroll"),
        ("lstm_long", "fuse-elementwise"),
        ("lstm_peeled", "unroll"),
        ("lstm_peeled", "fold"),
        ("lstm_batch", "pack"),
    ];
    let bless = std::env::var_os("LSTMC_BLESS").is_some();
    let mut failures = Vec::new();
    for (model, pass) in cases {
        let path = dir.join(format!("{model}.model"));
        let spec =
            lstmc::front::load(&format!("{model}.model"), &std::fs::read(&path).unwrap()).unwrap();
        let shapes = lower::Shapes {
            batch: spec.input.batch.unwrap_or(1),
            time: spec.input.time.unwrap(),
        };
        let mut f = lower::lower(&spec, shapes).unwrap();
        passes::optimize(&mut f, &Options::default(), Some(pass)).unwrap();
        let got = lstmc::ir::print::print(&f, None);
        let golden = dir.join(format!("{model}.after-{pass}.ir"));
        if bless {
            std::fs::write(&golden, &got).unwrap();
        } else if std::fs::read_to_string(&golden).unwrap_or_default() != got {
            failures.push(golden.display().to_string());
        }
    }
    assert!(failures.is_empty(), "IR differs from: {failures:?}");
}

/// The training step of an LSTM whose recurrent kernel (32×128) is large enough for
/// autodiff to defer its gradient past the loop, with inputs for the interpreter.
fn lstm_train_step() -> (Function, Vec<ArrayD<f64>>) {
    lstm_train_step_of(2)
}

/// [`lstm_train_step`] for `batch` rows.
fn lstm_train_step_of(batch: usize) -> (Function, Vec<ArrayD<f64>>) {
    lstm_train_step_over(batch, 20)
}

/// [`lstm_train_step_of`] over `time` steps.
fn lstm_train_step_over(batch: usize, time: usize) -> (Function, Vec<ArrayD<f64>>) {
    lstm_train_step_sized(32, batch, time)
}

/// [`lstm_train_step_over`] with `units` units.
fn lstm_train_step_sized(units: usize, batch: usize, time: usize) -> (Function, Vec<ArrayD<f64>>) {
    let spec = lstmc::front::load(
        "m.model",
        format!("LSTM {units} input_dim=3 input_length={time} batch_size={batch}\nDense 2\ncompile loss=mse optimizer=adam\n").as_bytes(),
    )
    .unwrap();
    let w = lstmc::weights::Weights::init(&spec, 3);
    let forward = lower::lower(&spec, lower::Shapes { batch, time }).unwrap();
    let opt = lstmc::model::Optimizer::keras_default("adam").unwrap();
    let step = lstmc::autodiff::train_step(&forward, lstmc::model::Loss::Mse, opt).unwrap();
    let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[batch, time, 3]), |i| {
        ((i[0] * 60 + i[1] * 3 + i[2]) % 7) as f64 / 7.0 - 0.4
    });
    let inputs: Vec<ArrayD<f64>> = step
        .inputs()
        .map(|(r, p)| match r {
            InputRole::X => x.clone(),
            InputRole::Weight { layer, name } => w.get(layer, name).unwrap().clone(),
            InputRole::Target => ArrayD::from_elem(step.shape(p), 0.3),
            InputRole::Hyper => ArrayD::from_elem(step.shape(p), 1e-3),
            _ => ArrayD::from_elem(step.shape(p), 0.01), // the optimizer's slots
        })
        .collect();
    (step, inputs)
}

/// `step` optimized up to `pass`, checked to compute what `step` does.
fn optimized_alike(step: &Function, pass: &str, inputs: &[ArrayD<f64>]) -> Function {
    optimized_alike_with(step, pass, inputs, &Options::default())
}

/// The default options without packed weights (CPUs without the packed kernel).
fn unpacked() -> Options {
    Options {
        pack_min: usize::MAX,
        ..Options::default()
    }
}

/// [`optimized_alike`] with `opts`.
fn optimized_alike_with(
    step: &Function,
    pass: &str,
    inputs: &[ArrayD<f64>],
    opts: &Options,
) -> Function {
    let mut after = step.clone();
    passes::optimize(&mut after, opts, Some(pass)).unwrap();
    let want = interp::run(step, inputs).unwrap();
    let got = interp::run(&after, inputs).unwrap();
    assert_eq!(got.len(), want.len());
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("after {pass}, output {k}"), a, b, 1e-12);
    }
    after
}

/// The instructions of every loop body and of the entry, with their ops.
fn ops(f: &Function) -> Vec<lstmc::ir::Op> {
    let mut out = Vec::new();
    f.walk(f.entry, &mut |i| out.push(f.inst(i).op.clone()));
    out
}

/// `cse` on a training step: autodiff builds each step's gate adjoint `dz` twice (for
/// `dz · Uᵀ` and for the weight gradient deferred past the loop, as it is for a recurrent
/// kernel of at least 4,096 weights); after the pass the backward loop computes and
/// stacks it once, no block holds two equal instructions, and the step's loss and
/// updates are the same numbers.
#[test]
fn cse_merges_the_repeated_adjoints_of_a_training_step() {
    use lstmc::ir::Op;
    let (step, inputs) = lstm_train_step();
    // The widest stacked results of the backward (last) loop: `dz` over time.
    let stacked_dz = |f: &Function| {
        let mut loops = Vec::new();
        f.walk(f.entry, &mut |i| {
            if let Op::Loop { .. } = f.inst(i).op {
                loops.push(i);
            }
        });
        let d = f.inst(*loops.last().unwrap());
        d.results[d.args.len()..]
            .iter()
            .filter(|&&r| f.shape(r).last() == Some(&128))
            .count()
    };
    let before = optimized_alike(&step, "dce", &inputs);
    let after = optimized_alike(&step, "cse", &inputs);
    assert_eq!(stacked_dz(&before), 2);
    assert_eq!(stacked_dz(&after), 1);
    for b in after.reachable_blocks() {
        let insts = &after.block(b).insts;
        for (k, &i) in insts.iter().enumerate() {
            let d = after.inst(i);
            let equal = insts[..k].iter().any(|&j| {
                let e = after.inst(j);
                e.op == d.op && e.args == d.args && !matches!(d.op, Op::Zeros(_))
            });
            assert!(!equal, "{} repeated after cse", d.op.mnemonic());
        }
    }
}

/// `concat` on a training step: the four gates' zero-padded adjoints and their sum
/// become one `concat_last` of the four, with the same numbers.
#[test]
fn concat_joins_the_padded_gate_adjoints() {
    use lstmc::ir::Op;
    let (step, inputs) = lstm_train_step();
    let before = optimized_alike(&step, "cse", &inputs);
    let pads = |f: &Function| {
        ops(f)
            .iter()
            .filter(|op| matches!(op, Op::PadLast { .. }))
            .count()
    };
    assert!(pads(&before) >= 4, "the adjoints are padded before");
    let after = optimized_alike(&step, "concat", &inputs);
    assert_eq!(pads(&after), 0);
    let concats: Vec<Op> = ops(&after)
        .into_iter()
        .filter(|op| matches!(op, Op::ConcatLast { .. }))
        .collect();
    assert!(!concats.is_empty());
    for op in concats {
        let Op::ConcatLast { starts, total } = op else {
            unreachable!()
        };
        assert_eq!((starts, total), (vec![0, 32, 64, 96], 128));
    }
}

/// The tape of an optimized LSTM training step holds what the backward pass reads and
/// no more: per step the previous `h` and `c`, the four gate activations and `tanh(c)`.
/// Sigmoid and tanh derivatives come from their outputs, so no pre-activation is kept.
#[test]
fn the_lstm_tape_holds_seven_values_per_step() {
    use lstmc::ir::Op;
    let (step, inputs) = lstm_train_step();
    let f = optimized_alike(&step, "fuse-elementwise", &inputs);
    let mut loops = Vec::new();
    f.walk(f.entry, &mut |i| {
        if let Op::Loop { .. } = f.inst(i).op {
            loops.push(i);
        }
    });
    let forward = f.inst(loops[0]);
    let stacked = forward.results.len() - forward.args.len();
    assert_eq!(stacked, 7, "{}", lstmc::ir::print::print(&f, None));
}

/// `fuse-elementwise` on a training step takes the activations' derivatives into the
/// backward kernels: no `*_grad` instruction is left on its own, and per backward step
/// the elementwise work is at most two kernels, with the same numbers.
#[test]
fn activation_gradients_fuse_into_the_backward_kernels() {
    use lstmc::ir::{FNode, Op};
    let (step, inputs) = lstm_train_step();
    let before = optimized_alike(&step, "concat", &inputs);
    let count =
        |f: &Function, pick: &dyn Fn(&Op) -> bool| ops(f).iter().filter(|op| pick(op)).count();
    assert!(count(&before, &|op| matches!(op, Op::ActGrad(_))) >= 5);
    let after = optimized_alike(&step, "fuse-elementwise", &inputs);
    assert_eq!(count(&after, &|op| matches!(op, Op::ActGrad(_))), 0);
    let fused_grads = count(
        &after,
        &|op| matches!(op, Op::Fused(k) if k.nodes.iter().any(|n| matches!(n, FNode::ActGrad(..)))),
    );
    assert!(fused_grads >= 1);
    // The backward loop's body: its fused kernels, per unrolled step.
    let mut loops = Vec::new();
    after.walk(after.entry, &mut |i| {
        if let Op::Loop { body, per_iter, .. } = after.inst(i).op {
            loops.push((body, per_iter));
        }
    });
    let (body, per_iter) = *loops.last().unwrap();
    let kernels = after
        .block(body)
        .insts
        .iter()
        .filter(|&&i| {
            matches!(after.inst(i).op, Op::Fused(_))
                && after.shape(after.inst(i).results[0]).len() == 2
        })
        .count();
    assert!(
        kernels <= 2 * per_iter,
        "{kernels} kernels for {per_iter} steps"
    );
}

/// `schedule-updates` moves every update of a training step up to just after the
/// instruction that completes its gradient (nothing reads a weight or its slots after
/// it, which the verifier checks), with the same numbers: the recurrent kernel's update
/// follows its `matmul_at`, and no update waits for another weight's gradient.
#[test]
fn updates_follow_their_gradients() {
    use lstmc::ir::Op;
    let (step, inputs) = lstm_train_step();
    let before = optimized_alike(&step, "fuse-elementwise", &inputs);
    let after = optimized_alike(&step, "schedule-updates", &inputs);
    let insts = &after.block(after.entry).insts;
    let updates: Vec<usize> = (0..insts.len())
        .filter(|&p| matches!(after.inst(insts[p]).op, Op::Update(_)))
        .collect();
    assert_eq!(
        updates.len(),
        5,
        "kernel, recurrent kernel, bias, dense kernel and bias"
    );
    let first_in = |f: &Function| {
        let insts = &f.block(f.entry).insts;
        insts
            .iter()
            .position(|&i| matches!(f.inst(i).op, Op::Update(_)))
            .unwrap()
    };
    assert!(first_in(&after) < first_in(&before), "updates moved up");
    for p in updates {
        let gradient = after.inst(insts[p]).args[1];
        let def = insts[..p]
            .iter()
            .rposition(|&i| after.inst(i).results.contains(&gradient));
        // Right after its gradient, or after other updates that moved up behind it.
        if let Some(d) = def {
            assert!(
                insts[d + 1..p]
                    .iter()
                    .all(|&i| matches!(after.inst(i).op, Op::Update(_))),
                "update at {p} waits past other work after its gradient at {d}"
            );
        }
    }
}

/// The buffer plan of an optimized training step puts every per-step value that a loop
/// computes and stacks (the LSTM's tape of seven values) straight into its time slice
/// of the stacked result, instead of its own slot and a copy per step; the native step
/// still equals the interpreter (`tests/train_step.rs`, `tests/train.rs`).
#[test]
fn loops_compute_stacked_values_in_place() {
    use lstmc::ir::Op;
    use lstmc::jit::plan::{plan, Base};
    let (step, inputs) = lstm_train_step();
    let f = optimized_alike(&step, "schedule-updates", &inputs);
    let p = plan(&f).unwrap();
    p.check_bounds(&f).unwrap();
    let mut loops = Vec::new();
    f.walk(f.entry, &mut |i| {
        if let Op::Loop { .. } = f.inst(i).op {
            loops.push(i);
        }
    });
    let d = f.inst(loops[0]);
    let Op::Loop { body, per_iter, .. } = d.op else {
        unreachable!()
    };
    let carried = d.args.len();
    let stacked = &d.results[carried..];
    let yielded = &f.inst(*f.block(body).insts.last().unwrap()).args;
    let defined: Vec<_> = f
        .block(body)
        .insts
        .iter()
        .flat_map(|&i| f.inst(i).results.clone())
        .collect();
    let mut in_place = 0;
    for j in 0..per_iter {
        for (s, &st) in stacked.iter().enumerate() {
            let y = yielded[carried + j * stacked.len() + s];
            if !defined.contains(&y) {
                continue; // a loop parameter (the previous h and c): copied
            }
            let (yl, sl) = (p.loc(y).unwrap(), p.loc(st).unwrap());
            let steps = f.shape(st)[1];
            assert_eq!(yl.base, Base::Arena);
            assert_eq!(
                yl.offset,
                sl.offset + (j * sl.row_stride) as isize,
                "{y} of {st}"
            );
            assert_eq!(
                yl.k.map(|(_, per_k)| per_k),
                Some((per_iter * sl.row_stride) as isize)
            );
            assert_eq!(yl.row_stride, steps * sl.row_stride);
            in_place += 1;
        }
    }
    // Seven values a step; only the first step of an iteration reads h and c from the
    // loop's parameters (copied), the others from the step before, in the body.
    assert_eq!(in_place, 7 * per_iter - 2);
}

/// The plan of a training step writes each backward step's gate adjoints (four
/// pieces of 32 columns from one kernel) straight into their columns of the
/// concatenation that `dz·Uᵀ` reads, and of its stacked slice, instead of copying them.
#[test]
fn gate_adjoints_are_written_into_their_concatenation() {
    use lstmc::ir::Op;
    use lstmc::jit::plan::plan;
    let (step, inputs) = lstm_train_step_of(8);
    let f = optimized_alike(&step, "schedule-updates", &inputs);
    let p = plan(&f).unwrap();
    p.check_bounds(&f).unwrap();
    let mut concats = Vec::new();
    for b in f.reachable_blocks().into_iter().skip(1) {
        for &i in &f.block(b).insts {
            if let Op::ConcatLast { starts, total } = &f.inst(i).op {
                concats.push((i, starts.clone(), *total));
            }
        }
    }
    assert!(!concats.is_empty());
    for (i, starts, total) in concats {
        let d = f.inst(i);
        assert_eq!(total, 128);
        let cl = p.loc(d.results[0]).unwrap();
        for (&a, &start) in d.args.iter().zip(&starts) {
            assert!(p.in_concat.contains(&a), "{a} of {i} is copied");
            let al = p.loc(a).unwrap();
            assert_eq!(al.offset, cl.offset + start as isize, "{a} of {i}");
            assert_eq!(
                (al.base, al.k, al.row_stride),
                (cl.base, cl.k, cl.row_stride)
            );
            assert_eq!((al.rows, al.cols), (8, 32));
        }
    }
}

/// A fully unrolled training step (4 steps) has no loop to stack its tape: `stack`s
/// join each step's values for the backward pass. Every step that a kernel or a
/// concatenation of the stack's block computes is planned in its step of the stack
/// (and a concatenation's pieces in their columns of that step), so the stack copies
/// only the others (the initial states, which are inputs).
#[test]
fn an_unrolled_tape_is_written_into_its_stacks() {
    use lstmc::ir::Op;
    use lstmc::jit::plan::plan;
    let (step, inputs) = lstm_train_step_over(3, 4);
    let f = optimized_alike(&step, "schedule-updates", &inputs);
    let p = plan(&f).unwrap();
    p.check_bounds(&f).unwrap();
    let (mut in_place, mut copied, mut pieces) = (0, 0, 0);
    f.walk(f.entry, &mut |i| {
        let d = f.inst(i);
        let Op::Stack = d.op else { return };
        let s = d.results[0];
        let sl = p.loc(s).unwrap();
        let &[b, t, feat] = f.shape(s) else {
            panic!("{s} is not a sequence")
        };
        for (k, &a) in d.args.iter().enumerate() {
            let by_kernel = f
                .def_inst(a)
                .is_some_and(|q| matches!(f.inst(q).op, Op::Fused(_) | Op::ConcatLast { .. }));
            if !by_kernel {
                assert!(!p.in_stack.contains(&a), "{a} of {i}");
                copied += 1;
                continue;
            }
            assert!(p.in_stack.contains(&a), "{a} of {i} is copied");
            let al = p.loc(a).unwrap();
            assert_eq!(
                al.offset,
                sl.offset + (k * sl.row_stride) as isize,
                "{a} of {i}"
            );
            assert_eq!((al.base, al.k), (sl.base, None));
            assert_eq!(
                (al.rows, al.cols, al.row_stride),
                (b, feat, t * sl.row_stride)
            );
            in_place += 1;
            // A concatenation in a step: its pieces in their columns of the step.
            let q = f.def_inst(a).unwrap();
            if let Op::ConcatLast { starts, .. } = &f.inst(q).op {
                for (&piece, &start) in f.inst(q).args.iter().zip(starts) {
                    assert!(p.in_concat.contains(&piece), "{piece} of {a} is copied");
                    assert_eq!(p.loc(piece).unwrap().offset, al.offset + start as isize);
                    pieces += 1;
                }
            }
        }
    });
    // The tape: seven stacks of four steps, of which h and c start from the input
    // states. An eighth stacks the backward steps' four concatenated gate adjoints for
    // the weight gradient, four pieces each.
    assert_eq!((in_place, copied, pieces), (7 * 4 - 2 + 4, 2, 16));
}

/// A forward loop hands its state to the next step without copies: each carried value
/// (the last unrolled step's h and c) is computed in its loop parameter's slot, since
/// the parameter is dead by then. In a training step the forward loop also stacks its
/// parameters for the backward pass, so there they keep slots of their own, while the
/// backward loop's carried gradients (dh, dc) take their parameters' slots.
#[test]
fn loops_carry_their_state_in_place() {
    use lstmc::ir::Op;
    use lstmc::jit::plan::plan;
    // Per loop of `f`: (carried values in their parameter's slot, carried values).
    let in_place = |f: &Function| {
        let p = plan(f).unwrap();
        p.check_bounds(f).unwrap();
        let mut out = Vec::new();
        f.walk(f.entry, &mut |i| {
            let d = f.inst(i);
            let Op::Loop { body, .. } = d.op else { return };
            let n = d.args.len();
            let yielded = &f.inst(*f.block(body).insts.last().unwrap()).args[..n];
            let params = &f.block(body).params[1..];
            let same = yielded
                .iter()
                .zip(params)
                .filter(|&(&y, &q)| y != q && p.loc(y).unwrap() == p.loc(q).unwrap())
                .count();
            out.push((same, n));
        });
        out
    };
    let spec = lstmc::front::load(
        "m.model",
        "LSTM 32 input_dim=3 input_length=20 batch_size=8\n".as_bytes(),
    )
    .unwrap();
    let mut forward = lower::lower(&spec, lower::Shapes { batch: 8, time: 20 }).unwrap();
    passes::optimize(&mut forward, &Options::default(), None).unwrap();
    assert_eq!(in_place(&forward), vec![(2, 2)]);
    let (step, inputs) = lstm_train_step_of(8);
    let step = optimized_alike(&step, "schedule-updates", &inputs);
    let loops = in_place(&step);
    assert_eq!(loops.len(), 2);
    assert_eq!(loops[0], (0, 2), "forward loop: h and c are stacked too");
    assert!(loops[1].0 >= 2, "backward loop: {:?}", loops[1]);
}

/// `reverse` on a training step: autodiff stacks the backward loop's adjoints in
/// reverse time order and reversed the input projection's (8×20×128) to pair it with
/// the input (8×20×3) in the kernel's gradient; after the pass the input is reversed
/// instead, no reversal wider than the hidden state (32) is left, and the numbers
/// are the same.
#[test]
fn time_reversals_move_to_the_narrower_operand() {
    use lstmc::ir::Op;
    let (step, inputs) = lstm_train_step_of(8);
    let reversals = |f: &Function| {
        let mut shapes = Vec::new();
        f.walk(f.entry, &mut |i| {
            if f.inst(i).op == Op::ReverseTime {
                shapes.push(f.shape(f.result(i)).to_vec());
            }
        });
        shapes.sort();
        shapes
    };
    let before = optimized_alike(&step, "concat", &inputs);
    assert!(reversals(&before).contains(&vec![8, 20, 128]));
    let after = optimized_alike(&step, "reverse", &inputs);
    assert_eq!(reversals(&after), vec![vec![8, 20, 3], vec![8, 20, 32]]);
}

/// `transpose` on a training step of 8 rows: the backward loop reads the recurrent
/// kernel (32×128) through one transpose made before the loop, not transposed at every
/// step, with the same numbers. At 2 rows (the few-row kernels' case) nothing changes.
#[test]
fn the_backward_loop_reads_a_transposed_recurrent_kernel() {
    use lstmc::ir::Op;
    let (step, inputs) = lstm_train_step_of(8);
    let in_loops = |f: &Function, pick: &dyn Fn(&Op) -> bool| {
        let mut n = 0;
        for b in f.reachable_blocks().into_iter().skip(1) {
            n += f
                .block(b)
                .insts
                .iter()
                .filter(|&&i| pick(&f.inst(i).op))
                .count();
        }
        n
    };
    let is_bt = |op: &Op| *op == Op::MatMulBT;
    let before = optimized_alike(&step, "concat", &inputs);
    assert!(in_loops(&before, &is_bt) >= 1);
    let after = optimized_alike(&step, "transpose", &inputs);
    assert_eq!(in_loops(&after, &is_bt), 0);
    let transposes: Vec<_> = after
        .block(after.entry)
        .insts
        .iter()
        .filter(|&&i| after.inst(i).op == Op::Transpose)
        .map(|&i| after.shape(after.result(i)).to_vec())
        .collect();
    assert_eq!(transposes, vec![vec![128, 32]]);
    let (small, inputs) = lstm_train_step();
    let before = optimized_alike(&small, "concat", &inputs);
    let after = optimized_alike(&small, "transpose", &inputs);
    assert_eq!(ops(&before), ops(&after));
}

/// `transpose` on a training step with a wide recurrent kernel (512 × 2048) and 16 rows
/// (`passes::transpose::reads_weight_transposed`): the forward products read one
/// transpose made before them, as `matmul_bt`, and the backward ones the same transpose,
/// as `matmul`, with the same numbers. At 8 rows the forward products keep the kernel.
#[test]
fn a_wide_recurrent_kernel_is_read_transposed_forward_and_backward() {
    use lstmc::ir::Op;
    // (op, shape of the weight operand) of every product against the kernel or its transpose.
    let products = |f: &Function| {
        let mut out = Vec::new();
        f.walk(f.entry, &mut |i| {
            let d = f.inst(i);
            if matches!(d.op, Op::MatMul | Op::MatMulBT) {
                let w = f.shape(d.args[1]).to_vec();
                if w == [512, 2048] || w == [2048, 512] {
                    out.push((d.op.clone(), w));
                }
            }
        });
        out.sort_by_key(|p| format!("{p:?}"));
        out.dedup();
        out
    };
    let transposes = |f: &Function| ops(f).iter().filter(|o| **o == Op::Transpose).count();
    let (step, inputs) = lstm_train_step_sized(512, 16, 3);
    let before = optimized_alike(&step, "concat", &inputs);
    assert!(products(&before).contains(&(Op::MatMul, vec![512, 2048])));
    let after = optimized_alike_with(&step, "transpose", &inputs, &unpacked());
    assert_eq!(
        products(&after),
        vec![
            (Op::MatMul, vec![2048, 512]),
            (Op::MatMulBT, vec![2048, 512])
        ]
    );
    assert_eq!(transposes(&after), 1);
    let (step, inputs) = lstm_train_step_sized(512, 8, 3);
    let after = optimized_alike_with(&step, "transpose", &inputs, &unpacked());
    assert!(products(&after).contains(&(Op::MatMul, vec![512, 2048])));
}

/// `pack` on a training step of 32 rows over 20 steps with 64 units: the forward loop
/// reads the recurrent kernel (64×256) packed, the backward loop packed transposed, each
/// packed once before its loop. The input projection over all steps (640 × 3 · 3 × 256)
/// reads its kernel once and sums 3 terms, the gradient products against the Dense
/// kernel have 2 columns (a panel 12 times wider), and `aᵀ · d` has no weight: they
/// stay. The numbers are the same, and the `transpose` pass then finds nothing to do.
/// With packing off, nothing changes.
#[test]
fn loops_read_their_weights_packed_once() {
    use lstmc::ir::Op;
    let (step, inputs) = lstm_train_step_sized(64, 32, 20);
    let after = optimized_alike(&step, "pack", &inputs);
    let packs: Vec<(Op, Vec<usize>)> = after
        .block(after.entry)
        .insts
        .iter()
        .filter(|&&i| matches!(after.inst(i).op, Op::Pack { .. }))
        .map(|&i| {
            (
                after.inst(i).op.clone(),
                after.shape(after.inst(i).args[0]).to_vec(),
            )
        })
        .collect();
    let packed = |transposed| Op::Pack { transposed };
    assert_eq!(
        packs,
        vec![
            (packed(false), vec![64, 256]),
            (packed(true), vec![64, 256]),
        ]
    );
    // Each pack right before the loop that reads it.
    let entry = &after.block(after.entry).insts;
    let mut loops_before = Vec::new();
    for (pos, &i) in entry.iter().enumerate() {
        if matches!(after.inst(i).op, Op::Pack { .. }) {
            let p = after.result(i);
            let first = entry[pos..].iter().position(|&j| {
                let mut reads = after.inst(j).args.contains(&p);
                if let Op::Loop { body, .. } = after.inst(j).op {
                    after.walk(body, &mut |k| reads |= after.inst(k).args.contains(&p));
                }
                reads
            });
            assert_eq!(first, Some(1), "pack {pos} is read next");
            loops_before.push(matches!(after.inst(entry[pos + 1]).op, Op::Loop { .. }));
        }
    }
    assert_eq!(loops_before, vec![true, true]);
    let products = |f: &Function| {
        let mut n = 0;
        f.walk(f.entry, &mut |i| {
            n += usize::from(matches!(f.inst(i).op, Op::MatMulPacked { .. }))
        });
        n
    };
    // 4 steps in each of the two loops (unrolled by 4).
    assert_eq!(products(&after), 4 + 4);
    let transposed = optimized_alike(&step, "transpose", &inputs);
    assert_eq!(ops(&after), ops(&transposed));
    let before = optimized_alike_with(&step, "reverse", &inputs, &unpacked());
    let after = optimized_alike_with(&step, "pack", &inputs, &unpacked());
    assert_eq!(ops(&before), ops(&after));
}

/// `fold` on a training step at batch 1: every per-step bias gradient (`sum_rows` of a
/// one-row adjoint) becomes a view of its row, with the same numbers; at batch 2 the
/// sums stay.
#[test]
fn a_sum_over_one_row_folds_into_the_row() {
    use lstmc::ir::Op;
    let sums = |f: &Function| ops(f).iter().filter(|o| **o == Op::SumRows).count();
    let (step, inputs) = lstm_train_step_over(1, 4);
    let before = optimized_alike(&step, "unroll", &inputs);
    let after = optimized_alike(&step, "fold", &inputs);
    assert!(sums(&before) >= 16, "{} sums before fold", sums(&before));
    assert_eq!(sums(&after), 0);
    let (step, inputs) = lstm_train_step_over(2, 4);
    let after = optimized_alike(&step, "fold", &inputs);
    assert!(sums(&after) >= 16, "{} sums at batch 2", sums(&after));
}
