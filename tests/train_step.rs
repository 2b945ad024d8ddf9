//! The training step as one generated function (`autodiff::train_step`): forward,
//! loss, backward and the optimizer's updates.
//!
//! - On the interpreter, it equals the separate pieces it replaces: the loss of the
//!   reference prediction, the plain gradient function's gradients (differentiated
//!   before gate fusion, hoisting and the deferred weight products), and the host
//!   optimizer, to 1e-9, on every fixture and every optimizer.
//! - On native code (`Trainer`, one call per step), it follows the interpreter over
//!   three steps on random models, with every optimizer and the losses.

mod common;

use common::random::{random_model, RandomModel};
use common::*;
use lstmc::autodiff::{gradient, train_step};
use lstmc::ir::{lower, Function, GradRole, InputRole, OutputRole};
use lstmc::loss::{dense_targets, loss};
use lstmc::model::{Loss, ModelSpec, Optimizer};
use lstmc::optim::OptimizerState;
use lstmc::reference::{batch_shapes, Reference};
use lstmc::weights::Weights;
use ndarray::ArrayD;
use proptest::prelude::*;

/// Every optimizer rule, with non-default options.
fn optimizers() -> Vec<Optimizer> {
    vec![
        Optimizer::Sgd {
            learning_rate: 0.05,
            momentum: 0.0,
            nesterov: false,
        },
        Optimizer::Sgd {
            learning_rate: 0.05,
            momentum: 0.9,
            nesterov: false,
        },
        Optimizer::Sgd {
            learning_rate: 0.05,
            momentum: 0.8,
            nesterov: true,
        },
        // A large epsilon keeps Adam's step smooth in the gradient, so that f32 and f64
        // gradients a rounding apart give steps a rounding apart; the fixtures hold the
        // default epsilon to Keras.
        Optimizer::Adam {
            learning_rate: 0.01,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-2,
        },
        Optimizer::Rmsprop {
            learning_rate: 0.01,
            rho: 0.9,
            momentum: 0.0,
            epsilon: 1e-2,
        },
        Optimizer::Rmsprop {
            learning_rate: 0.01,
            rho: 0.8,
            momentum: 0.5,
            epsilon: 1e-2,
        },
    ]
}

/// Runs a train-step function on the interpreter; returns its outputs by role.
fn interpret_step(
    f: &Function,
    x: &ArrayD<f64>,
    w: &Weights,
    slots: &[(String, [ArrayD<f64>; 2])],
    target: &ArrayD<f64>,
    rate: f64,
) -> Vec<(OutputRole, ArrayD<f64>)> {
    let inputs: Vec<ArrayD<f64>> = f
        .inputs()
        .map(|(r, p)| match r {
            InputRole::X => x.clone(),
            InputRole::Weight { layer, name } => w.get(layer, name).unwrap().clone(),
            InputRole::State { .. } => ArrayD::zeros(f.shape(p)),
            InputRole::Target => target.clone(),
            InputRole::Hyper => ArrayD::from_elem(ndarray::IxDyn(&[1]), rate),
            InputRole::Slot { layer, name, index } => {
                let key = format!("layers.{layer}.{name}");
                slots.iter().find(|(n, _)| *n == key).unwrap().1[index].clone()
            }
            InputRole::DY => panic!("a train step takes no dy"),
            InputRole::Dropout { .. } => panic!("these models have no dropout"),
        })
        .collect();
    let outs = lstmc::interp::run(f, &inputs).unwrap();
    f.outputs.iter().map(|(r, _)| r.clone()).zip(outs).collect()
}

/// The pieces the train step replaces, on the interpreter: loss, gradients, host optimizer.
fn reference_step(
    spec: &ModelSpec,
    w: &Weights,
    x: &ArrayD<f64>,
    kind: Loss,
    target: &ArrayD<f64>,
    opt: Optimizer,
) -> (f64, Weights) {
    let y = Reference::new(spec.clone(), w.clone())
        .predict_batch(x)
        .unwrap()
        .y;
    let (value, dy) = loss(kind, &y, target).unwrap();
    let g = gradient(&lower::lower(spec, batch_shapes(spec, x.shape()).unwrap()).unwrap()).unwrap();
    let outs = lstmc::interp::run(&g, &gradient_inputs(&g, x, w, &dy)).unwrap();
    let grads: Vec<ArrayD<f64>> = w
        .tensors
        .iter()
        .map(|(n, _)| {
            g.outputs
                .iter()
                .zip(&outs)
                .find(|((r, _), _)| match r {
                    OutputRole::Grad(GradRole(InputRole::Weight { layer, name })) => {
                        format!("layers.{layer}.{name}") == *n
                    }
                    _ => false,
                })
                .map(|(_, a)| a.clone())
                .unwrap()
        })
        .collect();
    let shapes: Vec<Vec<usize>> = w.tensors.iter().map(|(_, t)| t.shape().to_vec()).collect();
    let refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
    let mut state = OptimizerState::new(opt, &refs);
    let mut after = w.clone();
    let mut ws: Vec<&mut ArrayD<f64>> = after.tensors.iter_mut().map(|(_, t)| t).collect();
    let gs: Vec<&ArrayD<f64>> = grads.iter().collect();
    state.step(&mut ws, &gs).unwrap();
    (value, after)
}

fn zero_slots(w: &Weights) -> Vec<(String, [ArrayD<f64>; 2])> {
    w.tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                [ArrayD::zeros(t.raw_dim()), ArrayD::zeros(t.raw_dim())],
            )
        })
        .collect()
}

#[test]
fn the_train_step_equals_loss_gradient_and_optimizer_on_every_fixture() {
    for name in fixture_names() {
        let fx = load(&name);
        let spec = fx.spec();
        let w = fx.weights(&spec);
        let x = array(&fx.batches()[0]["x"]);
        let target = array(&fx.json["loss"]["target"]);
        let kind = fx.loss_kind();
        let forward = lower::lower(&spec, batch_shapes(&spec, x.shape()).unwrap()).unwrap();
        for opt in optimizers().into_iter().chain([fx.optimizer()]) {
            let f = train_step(&forward, kind, opt).unwrap();
            lstmc::ir::verify::verify(&f).unwrap();
            let outs = interpret_step(&f, &x, &w, &zero_slots(&w), &target, opt.step_rate(1));
            let (want_loss, want_w) = reference_step(&spec, &w, &x, kind, &target, opt);
            let got_loss = outs.iter().find(|(r, _)| *r == OutputRole::Loss).unwrap().1[[0]];
            assert!(
                (got_loss - want_loss).abs() <= 1e-9 * want_loss.abs().max(1.0),
                "{name} {opt:?}: loss {got_loss} vs {want_loss}"
            );
            for (n, want) in &want_w.tensors {
                let got = outs
                    .iter()
                    .find(|(r, _)| match r {
                        OutputRole::Updated(InputRole::Weight { layer, name }) => {
                            format!("layers.{layer}.{name}") == *n
                        }
                        _ => false,
                    })
                    .unwrap_or_else(|| panic!("{name}: no updated {n}"));
                for (i, (a, b)) in got.1.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                        "{name} {opt:?} {n}[{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_train_step_rejects_reading_a_weight_after_its_update() {
    // The plan refuses an update whose weight is read later: the in-place write would
    // change what that read sees.
    let spec = lstmc::front::load("m.model", b"Dense 3 input_dim=2\n").unwrap();
    let forward = lower::lower(&spec, batch_shapes(&spec, &[2, 2]).unwrap()).unwrap();
    let mut f = train_step(&forward, Loss::Mse, optimizers()[0]).unwrap();
    let kernel = f.block(f.entry).params[1];
    let entry = f.entry;
    let late = f
        .push(
            entry,
            lstmc::ir::Op::Binary(lstmc::ir::BinOp::Add),
            &[kernel, kernel],
            None,
        )
        .unwrap()
        .unwrap();
    f.outputs.push((OutputRole::Y, late));
    let err = lstmc::jit::compile(f, &lstmc::jit::Options::default()).unwrap_err();
    assert!(err.to_string().contains("read after its update"), "{err}");
}

fn losses_for(spec: &ModelSpec) -> Vec<Loss> {
    let softmax = spec
        .layers
        .last()
        .is_some_and(|l| l.activation == lstmc::model::Activation::Softmax);
    if softmax {
        vec![Loss::Mse, Loss::CategoricalCrossentropy]
    } else {
        vec![Loss::Mse, Loss::Mae]
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn native_train_steps_follow_the_interpreter(m in random_model(), which in 0..6usize, l in 0..2usize) {
        native_follows_interpreter(&m, which, l)?;
    }
}

/// `m`'s training step over `time` steps (mse, `optimizers()[3]`) after the pass pipeline.
fn optimized_adam_step(m: &RandomModel, time: usize) -> lstmc::ir::Function {
    optimized_adam_step_with(m, time, &lstmc::passes::Options::default())
}

/// [`optimized_adam_step`] with the passes' options `opts`.
fn optimized_adam_step_with(
    m: &RandomModel,
    time: usize,
    opts: &lstmc::passes::Options,
) -> lstmc::ir::Function {
    let forward = lower::lower(
        &m.spec(),
        lower::Shapes {
            batch: m.batch,
            time,
        },
    )
    .unwrap();
    let mut f = train_step(&forward, Loss::Mse, optimizers()[3]).unwrap();
    lstmc::passes::optimize(&mut f, opts, None).unwrap();
    f
}

/// Recurrent layers of 8 rows and at least 32,768 multiply-adds per backward product:
/// the `transpose` pass gives their backward loops a transposed copy of the recurrent
/// kernels, which random models reach only now and then.
#[test]
fn native_train_steps_with_transposed_recurrent_kernels_follow_the_interpreter() {
    let m = RandomModel {
        text: "LSTM 36 input_dim=5 input_length=6 return_sequences\nGRU 40 return_sequences\nSimpleRNN 64\n".into(),
        batch: 8,
        seed: 11,
    };
    let f = optimized_adam_step(&m, 6);
    let mut transposes = 0;
    f.walk(f.entry, &mut |i| {
        transposes += usize::from(f.inst(i).op == lstmc::ir::Op::Transpose);
    });
    assert_eq!(transposes, 3, "one per recurrent kernel");
    for which in [0, 3, 4] {
        native_follows_interpreter(&m, which, 0).unwrap();
    }
}

/// Batch-1 training over one to four steps: the host updates compute each weight's
/// gradient from that many rows as they go, with code specialized for each count, and
/// must still give the bits of the generated 128-bit updates (the last check of
/// `native_follows_interpreter`), which random models, mostly of more rows, seldom
/// reach. 19 units: whole vectors and a masked rest; the Dense kernel of 12 columns
/// takes the narrow rows' path.
#[test]
fn few_row_updates_have_the_bits_of_the_generated_ones() {
    for steps in 1..=4 {
        let m = RandomModel {
            text: format!(
                "LSTM 19 input_dim=3 input_length={steps}\nDense 12 activation=softmax\n"
            ),
            batch: 1,
            seed: 5 + steps as u64,
        };
        for which in [3, 4, 5] {
            native_follows_interpreter(&m, which, 0).unwrap();
        }
    }
}

/// A wide recurrent kernel (513 × 2052) at 16 rows, where packed weights are off (CPUs
/// without the packed kernel): the forward products read its transpose column by column
/// and the backward ones the same transpose
/// (`passes::transpose::reads_weight_transposed`), and training follows the interpreter,
/// as it does with the kernel packed.
#[test]
fn native_train_steps_with_a_wide_recurrent_kernel_follow_the_interpreter() {
    let m = RandomModel {
        text: "LSTM 513 input_dim=3 input_length=3\nDense 4\n".into(),
        batch: 16,
        seed: 9,
    };
    let mut unpacked = lstmc::jit::Options::default();
    unpacked.tuning.packed_weights = false;
    let f = optimized_adam_step_with(&m, 3, &unpacked.pass_options());
    let mut forward_reads = 0;
    f.walk(f.entry, &mut |i| {
        let d = f.inst(i);
        forward_reads +=
            usize::from(d.op == lstmc::ir::Op::MatMulBT && f.shape(d.args[1]) == [2052, 513]);
    });
    assert!(
        forward_reads >= 1,
        "the forward products read the transpose"
    );
    let mut split = split_options();
    split.tuning.packed_weights = false;
    for which in [0, 3] {
        native_follows_interpreter(&m, which, 0).unwrap();
        native_follows_interpreter_with(&m, which, 0, [split, unpacked]).unwrap();
    }
}

/// Three training steps of `m` with optimizer `which` and loss `l` on native code
/// follow the interpreter (cases the interpreter finds ill-conditioned are rejected).
fn native_follows_interpreter(
    m: &RandomModel,
    which: usize,
    l: usize,
) -> Result<(), TestCaseError> {
    native_follows_interpreter_with(
        m,
        which,
        l,
        [split_options(), lstmc::jit::Options::default()],
    )
}

/// [`native_follows_interpreter`] compiled with each of `options`.
fn native_follows_interpreter_with(
    m: &RandomModel,
    which: usize,
    l: usize,
    options: [lstmc::jit::Options; 2],
) -> Result<(), TestCaseError> {
    {
        prop_assume!(!m.text.contains("stateful"));
        let spec = m.spec();
        let w0 = m.weights(&spec);
        let x = m.inputs(&spec, 1).remove(0);
        let y = Reference::new(spec.clone(), w0.clone())
            .predict_batch(&x)
            .unwrap()
            .y;
        prop_assume!(y.iter().all(|v| v.abs() < 1e3), "overflowing model");
        let kind = losses_for(&spec)[l];
        let target = if kind == Loss::CategoricalCrossentropy {
            // One-hot rows: the class of each row's smallest output.
            let c = *y.shape().last().unwrap();
            let mut t = ArrayD::zeros(y.raw_dim());
            for (row, trow) in y
                .as_slice()
                .unwrap()
                .chunks(c)
                .zip(t.as_slice_mut().unwrap().chunks_mut(c))
            {
                let k = (0..c).fold(0, |b, i| if row[i] < row[b] { i } else { b });
                trow[k] = 1.0;
            }
            t
        } else {
            y.mapv(|v| v * 0.5 + 0.1)
        };
        let opt = optimizers()[which];
        let forward = lower::lower(&spec, batch_shapes(&spec, x.shape()).unwrap()).unwrap();
        let f = train_step(&forward, kind, opt).unwrap();
        let dense = dense_targets(kind, y.shape(), &target).unwrap();
        // The interpreter, three steps, feeding back weights and slots.
        let three_steps = |x: &ArrayD<f64>| {
            let mut w = w0.clone();
            let mut slots = zero_slots(&w0);
            let mut losses = Vec::new();
            for step in 1..=3u64 {
                let outs = interpret_step(&f, x, &w, &slots, &dense, opt.step_rate(step));
                for (role, a) in outs {
                    match role {
                        OutputRole::Loss => losses.push(a[[0]]),
                        OutputRole::Updated(InputRole::Weight { layer, name }) => {
                            let key = format!("layers.{layer}.{name}");
                            w.tensors.iter_mut().find(|(n, _)| *n == key).unwrap().1 = a;
                        }
                        OutputRole::Updated(InputRole::Slot { layer, name, index }) => {
                            let key = format!("layers.{layer}.{name}");
                            slots.iter_mut().find(|(n, _)| *n == key).unwrap().1[index] = a;
                        }
                        _ => {}
                    }
                }
            }
            (losses, w)
        };
        let (losses, w) = three_steps(&x);
        prop_assume!(
            losses.iter().all(|l| l.is_finite() && l.abs() < 1e3),
            "diverging"
        );
        // Conditioning, on the interpreter alone: a run whose losses or weights move when
        // the input moves by 1e-6 cannot agree between f32 and f64 (a gradient's sign that
        // flips at a kink of relu or mae, at any of the three steps).
        let (nudged_losses, nudged) = three_steps(&x.mapv(|v| v * (1.0 + 1e-6)));
        for (a, b) in losses.iter().zip(&nudged_losses) {
            prop_assume!(
                (a - b).abs() <= 1e-5 * a.abs().max(1e-2),
                "ill-conditioned loss"
            );
        }
        for ((_, a), (_, b)) in w.tensors.iter().zip(&nudged.tensors) {
            let scale = a.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            prop_assume!(
                a.iter()
                    .zip(b.iter())
                    .all(|(p, q)| (p - q).abs() <= 1e-4 * scale),
                "ill-conditioned"
            );
        }
        // Native code, one call per step, compiled with each of `options` (by default:
        // with every product on the host GEMM and every fused kernel split between two
        // threads, and as compiled by default).
        let xf = x.mapv(|v| v as f32);
        let mut trained = Vec::new();
        for options in options {
            let mut t = lstmc::train::Trainer::new(spec.clone(), w0.clone(), kind, opt, options);
            for (k, want) in losses.iter().enumerate() {
                let (got, _) = t.train_on_batch(&xf, &target).unwrap();
                prop_assert!(
                    (got - want).abs() <= 1e-3 * want.abs().max(1e-2),
                    "{}: step {k} loss {got} vs {want}",
                    m.text
                );
            }
            for ((n, got), (_, want)) in t.weights().tensors.iter().zip(&w.tensors) {
                let scale = want.iter().fold(1e-2f64, |m, v| m.max(v.abs()));
                for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                    prop_assert!(
                        (a - b).abs() <= 1e-3 * scale,
                        "{} {opt:?} {kind:?} {:?}: {n}[{i}] native {a}, interpreter {b}",
                        m.text,
                        options.tuning
                    );
                }
            }
            trained.push(t);
        }
        let t = trained.pop().unwrap();
        // Adam's and RMSprop's host vector kernels (512- or 256-bit) and the generated
        // 128-bit updates give the same bits, and so do the host's activations and the
        // generated ones, compiled with the last of `options`.
        let wide = options[1];
        if wide.tuning.wide_updates || wide.tuning.wide_activations {
            let mut narrow = wide;
            narrow.tuning.wide_updates = false;
            narrow.tuning.wide_activations = false;
            let mut n = lstmc::train::Trainer::new(spec.clone(), w0.clone(), kind, opt, narrow);
            for _ in 0..losses.len() {
                n.train_on_batch(&xf, &target).unwrap();
            }
            for ((name, a), (_, b)) in n.weights().tensors.iter().zip(&t.weights().tensors) {
                prop_assert!(
                    a == b,
                    "{}: {name} differs between the generated and the host code ({opt:?})",
                    m.text
                );
            }
            // The slots too: a gradient a rounding off can leave the weights' bits alone
            // (a small step rounds away) but not the moments'.
            for ((name, a), (_, b)) in n.optimizer_slots().iter().zip(&t.optimizer_slots()) {
                for k in 0..2 {
                    let bits = |s: &ArrayD<f32>| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    prop_assert!(
                        bits(&a[k]) == bits(&b[k]),
                        "{}: slot {k} of {name} differs between the generated and the host code ({opt:?})",
                        m.text
                    );
                }
            }
        }
    }
    Ok(())
}
