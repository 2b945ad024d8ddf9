//! Dropout in training (`dropout=`, `recurrent_dropout=`), as Keras 3's recurrent cells
//! apply it:
//!
//! - the training lowering, on the interpreter, against the cells written out here in
//!   f64 from Keras's code (`keras/src/layers/rnn/{lstm,gru,simple_rnn}.py`): one mask
//!   on the input shared by every gate, or with `recurrent_dropout` on an LSTM or GRU
//!   (Keras's `implementation=1`) one mask per gate on the input and on the previous
//!   output; the previous output a GRU mixes in, and an LSTM's carry, unmasked;
//! - its gradient, native against the interpreter and against finite differences;
//! - prediction without masks, and training that the masks change, reproducibly from
//!   the seed.

mod common;

use common::assert_close;
use lstmc::ir::{lower, InputRole, OutputRole};
use lstmc::model::{LayerKind, ModelSpec};
use lstmc::reference::batch_shapes;
use lstmc::weights::Weights;
use ndarray::{s, Array2, ArrayD, Axis, Ix2, IxDyn};

fn spec(text: &str) -> ModelSpec {
    lstmc::front::load("dropout.model", text.as_bytes()).unwrap()
}

/// Deterministic values in `[-1, 1)`.
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// The model's initial weights with every element moved a little (biases included,
/// which start at 0 or 1).
fn weights(spec: &ModelSpec) -> Weights {
    let mut w = Weights::init(spec, 3);
    for (k, (_, t)) in w.tensors.iter_mut().enumerate() {
        let d = values(t.len(), 40 + k as u64);
        t.iter_mut().zip(d).for_each(|(v, d)| *v += 0.2 * d);
    }
    w
}

/// A mask of `shape`: each element 0 or `1 / (1 - rate)`, about `rate` of them 0.
fn mask(shape: &[usize], rate: f64, seed: u64) -> ArrayD<f64> {
    let n = shape.iter().product();
    let scale = 1.0 / (1.0 - rate);
    let v = values(n, seed)
        .into_iter()
        .map(|u| if (u + 1.0) / 2.0 < rate { 0.0 } else { scale })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

/// The training lowering's inputs: x, the weights, zero states, a mask per dropout input.
fn inputs(
    f: &lstmc::ir::Function,
    spec: &ModelSpec,
    x: &ArrayD<f64>,
    w: &Weights,
) -> Vec<ArrayD<f64>> {
    f.inputs()
        .map(|(r, p)| match r {
            InputRole::X => x.clone(),
            InputRole::Weight { layer, name } => w.get(layer, name).unwrap().clone(),
            InputRole::State { .. } => ArrayD::zeros(f.shape(p)),
            InputRole::Dropout {
                layer,
                recurrent,
                gate,
            } => {
                let l = &spec.layers[layer];
                let rate = if recurrent {
                    l.recurrent_dropout
                } else {
                    l.dropout
                };
                mask(
                    f.shape(p),
                    rate,
                    100 + 10 * layer as u64 + 5 * u64::from(recurrent) + gate as u64,
                )
            }
            r => panic!("a forward function takes no {r}"),
        })
        .collect()
}

/// The mask input `role` of `f`, or ones of `shape` where `f` has none.
fn mask_of(
    f: &lstmc::ir::Function,
    ins: &[ArrayD<f64>],
    role: InputRole,
    shape: &[usize],
) -> Array2<f64> {
    f.inputs()
        .position(|(r, _)| r == role)
        .map_or_else(|| ArrayD::from_elem(IxDyn(shape), 1.0), |k| ins[k].clone())
        .into_dimensionality::<Ix2>()
        .unwrap()
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// One layer's outputs at every step, `(batch, time, units)`, by Keras's cell formulas in
/// f64, with the masks the lowering was given (gate `g`'s, or the shared one).
fn keras_cells(
    spec: &ModelSpec,
    w: &Weights,
    x: &ArrayD<f64>,
    f: &lstmc::ir::Function,
    ins: &[ArrayD<f64>],
) -> ArrayD<f64> {
    let l = &spec.layers[0];
    let (b, t, feat) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let u = l.units;
    let gates = l.kind.gates();
    // Keras's LSTM and GRU cells switch to `implementation=1`, a mask per gate, when
    // `recurrent_dropout` is set.
    let per_gate = l.kind != LayerKind::SimpleRnn && l.recurrent_dropout > 0.0;
    let masks = |recurrent: bool, cols: usize| -> Vec<Array2<f64>> {
        (0..gates)
            .map(|g| {
                let gate = if per_gate { g } else { 0 };
                mask_of(
                    f,
                    ins,
                    InputRole::Dropout {
                        layer: 0,
                        recurrent,
                        gate,
                    },
                    &[b, cols],
                )
            })
            .collect()
    };
    let (xm, hm) = (masks(false, feat), masks(true, u));
    let kernel = w
        .get(0, "kernel")
        .unwrap()
        .clone()
        .into_dimensionality::<Ix2>()
        .unwrap();
    let rec = w
        .get(0, "recurrent_kernel")
        .unwrap()
        .clone()
        .into_dimensionality::<Ix2>()
        .unwrap();
    let bias = w.get(0, "bias").unwrap();
    let cols = |m: &Array2<f64>, g: usize| m.slice(s![.., g * u..(g + 1) * u]).to_owned();
    let bias_of = |row: usize, g: usize| -> ndarray::Array1<f64> {
        let flat: Vec<f64> = bias.iter().copied().collect();
        let start = row * gates * u + g * u;
        ndarray::Array1::from(flat[start..start + u].to_vec())
    };
    let (mut h, mut c) = (Array2::<f64>::zeros((b, u)), Array2::<f64>::zeros((b, u)));
    let mut out = ndarray::Array3::<f64>::zeros((b, t, u));
    for k in 0..t {
        let xt = x.slice(s![.., k, ..]).to_owned();
        // Gate g's operands, masked as the cell masks them.
        let xg = |g: usize| &xt * &xm[g];
        let hg = |g: usize| &h * &hm[g];
        let new_h = match l.kind {
            LayerKind::Lstm => {
                let z: Vec<Array2<f64>> = (0..4)
                    .map(|g| {
                        xg(g).dot(&cols(&kernel, g)) + bias_of(0, g) + hg(g).dot(&cols(&rec, g))
                    })
                    .collect();
                let i = z[0].mapv(sigmoid);
                let fg = z[1].mapv(sigmoid);
                let cand = z[2].mapv(f64::tanh);
                let o = z[3].mapv(sigmoid);
                c = &fg * &c + &i * &cand;
                &o * &c.mapv(f64::tanh)
            }
            LayerKind::Gru => {
                let (bx, bh) = if l.reset_after {
                    (0, 1)
                } else {
                    (0, usize::MAX)
                };
                let x_g = |g: usize| xg(g).dot(&cols(&kernel, g)) + bias_of(bx, g);
                let r_g = |g: usize, v: &Array2<f64>| {
                    let r = v.dot(&cols(&rec, g));
                    if bh == 1 {
                        r + bias_of(1, g)
                    } else {
                        r
                    }
                };
                let z = (x_g(0) + r_g(0, &hg(0))).mapv(sigmoid);
                let r = (x_g(1) + r_g(1, &hg(1))).mapv(sigmoid);
                let rh = if l.reset_after {
                    &r * &r_g(2, &hg(2))
                } else {
                    r_g(2, &(&r * &hg(2)))
                };
                let hh = (x_g(2) + rh).mapv(f64::tanh);
                &z * &h + &(1.0 - &z) * &hh
            }
            LayerKind::SimpleRnn => {
                (xg(0).dot(&kernel) + bias_of(0, 0) + hg(0).dot(&rec)).mapv(f64::tanh)
            }
            LayerKind::Dense => unreachable!(),
        };
        h = new_h;
        out.slice_mut(s![.., k, ..]).assign(&h);
    }
    out.into_dyn()
}

#[test]
fn the_training_lowering_masks_as_keras_cells_do() {
    let models = [
        "LSTM 4 input_dim=3 input_length=5 return_sequences dropout=0.4",
        "LSTM 4 input_dim=3 input_length=5 return_sequences recurrent_dropout=0.3",
        "LSTM 4 input_dim=3 input_length=5 return_sequences dropout=0.4 recurrent_dropout=0.3",
        "GRU 4 input_dim=3 input_length=5 return_sequences dropout=0.4",
        "GRU 4 input_dim=3 input_length=5 return_sequences dropout=0.4 recurrent_dropout=0.3",
        "GRU 4 input_dim=3 input_length=5 return_sequences reset_after=false dropout=0.2 recurrent_dropout=0.5",
        "SimpleRNN 4 input_dim=3 input_length=5 return_sequences dropout=0.4 recurrent_dropout=0.3",
    ];
    for text in models {
        let spec = spec(text);
        let w = weights(&spec);
        let x = ArrayD::from_shape_vec(IxDyn(&[2, 5, 3]), values(30, 7)).unwrap();
        let shapes = batch_shapes(&spec, x.shape()).unwrap();
        let f = lower::lower_training(&spec, shapes).unwrap();
        let ins = inputs(&f, &spec, &x, &w);
        let masks = f
            .inputs()
            .filter(|(r, _)| matches!(r, InputRole::Dropout { .. }))
            .count();
        // Keras's masks: per gate with recurrent dropout on an LSTM or GRU, else one.
        let l = &spec.layers[0];
        let per_gate = l.kind != LayerKind::SimpleRnn && l.recurrent_dropout > 0.0;
        let each = if per_gate { l.kind.gates() } else { 1 };
        let want = each * (usize::from(l.dropout > 0.0) + usize::from(l.recurrent_dropout > 0.0));
        assert_eq!(masks, want, "{text}");
        let got = lstmc::interp::run(&f, &ins).unwrap();
        let y = f
            .outputs
            .iter()
            .position(|(r, _)| *r == OutputRole::Y)
            .unwrap();
        let want = keras_cells(&spec, &w, &x, &f, &ins);
        assert_close(text, &got[y], &want, 1e-12);
        // Without the masks (ones), the lowering as it predicts.
        let plain = lower::lower(&spec, shapes).unwrap();
        let ones: Vec<ArrayD<f64>> = f
            .inputs()
            .zip(&ins)
            .map(|((r, p), v)| match r {
                InputRole::Dropout { .. } => ArrayD::from_elem(IxDyn(f.shape(p)), 1.0),
                _ => v.clone(),
            })
            .collect();
        let unmasked = lstmc::interp::run(&f, &ones).unwrap();
        let predicted = lstmc::interp::run(&plain, &ins[..plain.inputs().count()]).unwrap();
        assert_close(text, &unmasked[y], &predicted[0], 1e-15);
        // And the masks do change it.
        let diff = (&got[y] - &predicted[0]).mapv(f64::abs).sum();
        assert!(diff > 1e-3, "{text}: the masks change nothing");
    }
}

/// The gradient of the training lowering with masks: native code against the
/// interpreter, and the interpreter against central finite differences of `Σ y · dy`.
#[test]
fn gradients_with_dropout_through_the_jit_and_finite_differences() {
    let models = [
        "LSTM 5 input_dim=3 input_length=4 dropout=0.3 recurrent_dropout=0.4\nDense 2",
        "GRU 5 input_dim=3 input_length=4 return_sequences dropout=0.3\nSimpleRNN 3 recurrent_dropout=0.5 dropout=0.2",
    ];
    for text in models {
        let spec = spec(text);
        let w = weights(&spec);
        let x = ArrayD::from_shape_vec(IxDyn(&[3, 4, 3]), values(36, 9)).unwrap();
        let shapes = batch_shapes(&spec, x.shape()).unwrap();
        let fwd = lower::lower_training(&spec, shapes).unwrap();
        let ins = inputs(&fwd, &spec, &x, &w);
        let y_shape = fwd.shape(fwd.outputs[0].1).to_vec();
        let dy =
            ArrayD::from_shape_vec(IxDyn(&y_shape), values(y_shape.iter().product(), 11)).unwrap();
        let g = lstmc::autodiff::gradient(&fwd).unwrap();
        // The gradient function's inputs: the forward's, then dy.
        let mut gins = ins.clone();
        gins.push(dy.clone());
        assert_eq!(gins.len(), g.inputs().count());
        let want = lstmc::interp::run(&g, &gins).unwrap();
        let native = common::run_native(&g, &gins);
        let objective = |ins: &[ArrayD<f64>]| -> f64 {
            let y = &lstmc::interp::run(&fwd, ins).unwrap()[0];
            (y * &dy).sum()
        };
        let mut checked = 0;
        for ((role, _), (want, got)) in g.outputs.iter().zip(want.iter().zip(&native)) {
            let OutputRole::Grad(lstmc::ir::GradRole(input)) = role else {
                continue;
            };
            let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            assert_close(&format!("{text} {role} native"), got, want, 1e-4 * scale);
            // Finite differences on three elements of each input.
            let k = fwd.inputs().position(|(r, _)| r == *input).unwrap();
            for e in [0, want.len() / 2, want.len() - 1] {
                let h = 1e-6;
                let mut up = ins.clone();
                let mut down = ins.clone();
                up[k].as_slice_mut().unwrap()[e] += h;
                down[k].as_slice_mut().unwrap()[e] -= h;
                let fd = (objective(&up) - objective(&down)) / (2.0 * h);
                let a = want.as_slice().unwrap()[e];
                assert!(
                    (fd - a).abs() <= 1e-6 * scale.max(1.0),
                    "{text} {role}[{e}]: gradient {a}, finite differences {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 15, "{text}: {checked}");
    }
}

/// Dropout acts in training only: a model predicts as the same model without it, and
/// trains differently, the same way again from the same seed.
#[test]
fn dropout_changes_training_reproducibly_and_never_prediction() {
    let with = "LSTM 6 input_dim=2 input_length=3 dropout=0.5 recurrent_dropout=0.5\nDense 1\n\
                compile loss=mse optimizer=adam learning_rate=0.01\n";
    let without = "LSTM 6 input_dim=2 input_length=3\nDense 1\n\
                   compile loss=mse optimizer=adam learning_rate=0.01\n";
    let x = ArrayD::from_shape_vec(IxDyn(&[8, 3, 2]), values(48, 5))
        .unwrap()
        .mapv(|v| v as f32);
    let y = x.sum_axis(Axis(1)).slice(s![.., ..1]).to_owned().into_dyn();
    let fit = |text: &str, seed: u64| {
        let mut net = lstmc::Model::parse(text)
            .unwrap()
            .compile(&Default::default())
            .unwrap();
        let predicted = net.predict(x.view()).unwrap();
        let mut o = net.fit_options();
        o.epochs = 3;
        o.batch_size = 4;
        o.seed = seed;
        // The seed then reaches nothing but the masks.
        o.shuffle = false;
        let losses: Vec<f64> = net
            .fit(x.view(), y.view(), &o)
            .unwrap()
            .iter()
            .map(|l| l.loss)
            .collect();
        (predicted, losses)
    };
    let (p_with, l_with) = fit(with, 1);
    let (p_without, l_without) = fit(without, 1);
    assert_eq!(p_with, p_without, "prediction with dropout");
    assert_ne!(l_with, l_without, "dropout changed no loss");
    assert_eq!(fit(with, 1).1, l_with, "not reproducible from the seed");
    assert_ne!(fit(with, 2).1, l_with, "the seed does not reach the masks");
    // The first epoch's first step starts from the same weights, so it differs only by
    // the masks: with them the loss of that batch differs too.
    assert!(l_with.iter().all(|l| l.is_finite()));
}

/// A training step's masks keep each element with probability `1 - rate`, as
/// `1 / (1 - rate)`: a linear SimpleRNN of one unit that sums 4000 inputs of 1 through
/// kernel weights of 1 outputs the kept count times the scale (its mean absolute error
/// against 0, from the step's own prediction), 4000 on average.
#[test]
fn masks_keep_one_minus_the_rate_scaled_up() {
    use lstmc::model::{Loss, Metric, Optimizer};
    let rate = 0.3;
    let spec = spec(&format!(
        "SimpleRNN 1 input_dim=4000 input_length=1 activation=linear use_bias=false dropout={rate}"
    ));
    let mut w = Weights::init(&spec, 0);
    for (name, t) in w.tensors.iter_mut() {
        let one = name.ends_with(".kernel") && !name.ends_with("recurrent_kernel");
        t.fill(if one { 1.0 } else { 0.0 });
    }
    let sgd = Optimizer::Sgd {
        learning_rate: 0.0,
        momentum: 0.0,
        nesterov: false,
    };
    let mut t = lstmc::train::Trainer::new(spec, w, Loss::Mae, sgd, Default::default());
    t.set_metric(Some(Metric::Mae));
    let x = ArrayD::<f32>::ones(IxDyn(&[1, 1, 4000]));
    let target = ArrayD::<f64>::zeros(IxDyn(&[1, 1]));
    let scale = 1.0 / (1.0 - rate);
    let mut sum = 0.0;
    for _ in 0..20 {
        let y = t.train_on_batch(&x, &target).unwrap().1.unwrap();
        let kept = y / scale;
        // Binomial(4000, 0.7): 2800 kept, standard deviation 29.
        assert!((kept - 2800.0).abs() < 200.0, "{kept} kept of 4000");
        sum += y;
    }
    assert!((sum / 20.0 - 4000.0).abs() < 60.0, "mean {}", sum / 20.0);
}
