//! Training on native code: every fixture's `train` block (Keras's
//! `train_on_batch` steps on the first batch from zero states) reproduced to
//! f32 precision: the loss before each step and the final weights.

mod common;

use common::*;
use lstmc::train::Trainer;

#[test]
fn every_fixture_train_block_on_native_code() {
    for_every_fixture_train_block(lstmc::jit::Options::default());
}

/// The same with every product, kernel and update split between two threads, each at
/// its smallest size: the few-row products and updates split by rows of the weight.
#[test]
fn every_fixture_train_block_split_between_threads() {
    for_every_fixture_train_block(split_options());
}

fn for_every_fixture_train_block(options: lstmc::jit::Options) {
    for name in fixture_names() {
        let fx = load(&name);
        let spec = fx.spec();
        let w = fx.weights(&spec);
        let tr = &fx.json["train"];
        let l = &fx.json["loss"];
        let (opt, kind) = (fx.optimizer(), fx.loss_kind());
        let mut t = Trainer::new(spec.clone(), w, kind, opt, options);
        let x = array(&fx.batches()[0]["x"]).mapv(|v| v as f32);
        let target = array(&l["target"]);
        for (k, want) in tr["losses"].as_array().unwrap().iter().enumerate() {
            t.reset_states();
            let (value, _) = t.train_on_batch(&x, &target).unwrap();
            let want = want.as_f64().unwrap();
            assert!(
                (value - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{name} step {k}: loss {value}, Keras {want}"
            );
        }
        let want = fx.final_weights(&spec);
        for ((n, got), (_, want)) in t.weights().tensors.iter().zip(&want.tensors) {
            for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                    "{name} final {n}[{i}]: {g} vs Keras {w}"
                );
            }
        }
    }
}

/// A run that diverges stops with an error naming the epoch and batch, and keeps the
/// weights of the epoch the error names: the same bits as a run of that many epochs.
#[test]
fn a_diverging_run_stops_naming_epoch_and_batch_and_keeps_the_last_good_epoch() {
    let x = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[8, 3, 2]), |i| {
        (i[0] + i[1] + i[2]) as f64 * 0.3
    });
    let model = b"LSTM 4 input_dim=2 input_length=3 activation=linear\nDense 1\n";
    let (err, kept) = fit_sgd(model, &x, 1e12, 2, 50, PLAIN);
    let err = err.expect_err("a learning rate of 1e12 diverges");
    assert!(
        err.contains("training diverged: the loss is") && err.contains("batch"),
        "{err}"
    );
    assert_kept_epoch(model, &x, 1e12, 2, PLAIN, &err, &kept);
}

/// An update that overflows in an epoch's last batch, whose loss was finite: the error
/// names that epoch, and the weights of the epoch before are kept, finite (not the
/// overflowed ones, which the next epoch would have started from).
#[test]
fn an_overflow_in_an_epochs_last_update_keeps_the_epoch_before() {
    // One batch an epoch; Dense's gradient is about 2 · 100 · x, times 1e36: past f32.
    let x = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[4, 2]), |i| (i[0] + i[1]) as f64);
    let model = b"Dense 1 input_dim=2\n";
    let (err, kept) = fit_sgd(model, &x, 1e36, 4, 5, PLAIN);
    let err = err.expect_err("a learning rate of 1e36 overflows");
    assert!(
        err.contains("the weights are not finite after epoch 1, batch 1"),
        "{err}"
    );
    assert_kept_epoch(model, &x, 1e36, 4, PLAIN, &err, &kept);
}

/// How [`fit_sgd`] fits besides its arguments: shuffled or not, the validation split, and
/// the states reset after every epoch or never.
#[derive(Clone, Copy)]
struct How {
    shuffle: bool,
    split: f64,
    reset_each_epoch: bool,
}

/// In order, no validation, states reset after every epoch.
const PLAIN: How = How {
    shuffle: false,
    split: 0.0,
    reset_each_epoch: true,
};

/// Fits `model` by SGD at `rate` on `x` against targets of 100 for `epochs` epochs of
/// batches of `batch`, as `how` says: the error (if any) and the weights after.
fn fit_sgd(
    model: &[u8],
    x: &ndarray::ArrayD<f64>,
    rate: f64,
    batch: usize,
    epochs: usize,
    how: How,
) -> (Result<(), String>, lstmc::weights::Weights) {
    use lstmc::data::Dataset;
    use lstmc::model::{Loss, Optimizer, ResetStates};
    use lstmc::train::FitOptions;
    let spec = lstmc::front::load("d.model", model).unwrap();
    let w = lstmc::weights::Weights::init(&spec, 1);
    let y = ndarray::ArrayD::from_elem(ndarray::IxDyn(&[x.shape()[0], 1]), 100.0);
    let data = Dataset {
        x: x.clone(),
        y: Some(y),
    };
    let opt = Optimizer::Sgd {
        learning_rate: rate,
        momentum: 0.0,
        nesterov: false,
    };
    let mut t = Trainer::new(spec, w, Loss::Mse, opt, lstmc::jit::Options::default());
    let fo = FitOptions {
        loss: Loss::Mse,
        optimizer: opt,
        epochs,
        batch_size: batch,
        shuffle: how.shuffle,
        reset_states: if how.reset_each_epoch {
            ResetStates::Epoch
        } else {
            ResetStates::Never
        },
        validation_split: how.split,
        seed: 0,
    };
    let result = t
        .fit(&data, &fo, |_| {})
        .map(|_| ())
        .map_err(|e| e.to_string());
    (result, t.weights())
}

/// `kept` are finite and the bits of a run of as many epochs as `err` says were kept
/// ("the weights of epoch N are kept").
fn assert_kept_epoch(
    model: &[u8],
    x: &ndarray::ArrayD<f64>,
    rate: f64,
    batch: usize,
    how: How,
    err: &str,
    kept: &lstmc::weights::Weights,
) {
    let epochs: usize = err
        .split("the weights of epoch ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no kept epoch in: {err}"));
    let (again, replayed) = fit_sgd(model, x, rate, batch, epochs, how);
    assert!(again.is_ok(), "{epochs} epochs do not diverge: {again:?}");
    assert_eq!(kept.tensors.len(), replayed.tensors.len());
    for ((name, a), (_, b)) in kept.tensors.iter().zip(&replayed.tensors) {
        assert!(
            a.iter().all(|v| v.is_finite()),
            "{name}: kept weights not finite"
        );
        let bits = |t: &ndarray::ArrayD<f64>| t.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(a),
            bits(b),
            "{name}: not the weights of epoch {epochs}"
        );
    }
}

/// The tutorial's stateful model at two threads (its recurrent kernel's batch-1 products
/// and update split between them) trains to the same bits whether the parts run on the
/// workers or, as when the workers' cores are far, all on the caller: where a part runs
/// changes nothing but the time. Also the same with every product, kernel and update
/// split at its smallest size, on a fixture's model.
#[test]
fn a_split_training_step_has_the_same_bits_wherever_its_parts_run() {
    use lstmc::jit::{set_placement, Placement};
    use lstmc::model::{Loss, Optimizer};
    use ndarray::{ArrayD, IxDyn};
    let text = std::fs::read(format!(
        "{}/examples/butterfly.model",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let spec = lstmc::front::load("butterfly.model", &text).unwrap();
    let mut threaded = lstmc::jit::Options::default();
    threaded.tuning.threads = 2;
    let adam = Optimizer::Adam {
        learning_rate: 0.001,
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-7,
    };
    let x = ArrayD::from_shape_fn(IxDyn(&[1, 4, 1]), |i| i[1] as f32 * 0.3 - 0.4);
    let mut target = ArrayD::zeros(IxDyn(&[1, 12]));
    target[[0, 5]] = 1.0;
    let tutorial = (
        spec.clone(),
        lstmc::weights::Weights::init(&spec, 7),
        Loss::CategoricalCrossentropy,
        adam,
        threaded,
        x,
        target,
    );
    let fx = load(&fixture_names()[0]);
    let fx_spec = fx.spec();
    let fixture = (
        fx_spec.clone(),
        fx.weights(&fx_spec),
        fx.loss_kind(),
        fx.optimizer(),
        split_options(),
        array(&fx.batches()[0]["x"]).mapv(|v| v as f32),
        array(&fx.json["loss"]["target"]),
    );
    for (spec, w, loss, opt, options, x, target) in [tutorial, fixture] {
        let steps = |placement| {
            set_placement(placement);
            let mut t = Trainer::new(spec.clone(), w.clone(), loss, opt, options);
            let losses: Vec<u64> = (0..4)
                .map(|_| t.train_on_batch(&x, &target).unwrap().0.to_bits())
                .collect();
            (losses, t.weights())
        };
        let (near_losses, near) = steps(Placement::Near);
        let (far_losses, far) = steps(Placement::Far);
        set_placement(Placement::Measured);
        assert_eq!(near_losses, far_losses, "{}: losses", spec.name);
        for ((n, a), (_, b)) in near.tensors.iter().zip(&far.tensors) {
            let differ = a
                .iter()
                .zip(b.iter())
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            assert_eq!(differ, 0, "{}: {n} differs in {differ} elements", spec.name);
        }
    }
}

/// The metric a training step returns is that of its own prediction, before the
/// update: the forward function's prediction on the same batch from the same weights,
/// scored by `metric`, for every fixture, under its own loss and three others (which
/// decide how targets are read: class indices for the sparse loss), and every metric.
/// Without a metric, the step returns none.
#[test]
fn a_step_returns_the_metric_of_its_prediction() {
    use lstmc::model::{Loss, Metric};
    let mut scored = 0;
    for name in fixture_names() {
        let fx = load(&name);
        let spec = fx.spec();
        let opt = fx.optimizer();
        let options = lstmc::jit::Options::default();
        let x = array(&fx.batches()[0]["x"]).mapv(|v| v as f32);
        let dense = array(&fx.json["loss"]["target"]);
        let classes = dense.map_axis(ndarray::Axis(dense.ndim() - 1), |row| {
            row.iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > row[b] { i } else { b }) as f64
        });
        for kind in [
            fx.loss_kind(),
            Loss::Mae,
            Loss::BinaryCrossentropy,
            Loss::SparseCategoricalCrossentropy,
        ] {
            let target = match kind {
                Loss::SparseCategoricalCrossentropy => classes.clone(),
                _ => dense.clone(),
            };
            let mut p = Trainer::new(spec.clone(), fx.weights(&spec), kind, opt, options);
            let y = p.predict_batch(&x).unwrap().mapv(f64::from);
            for metric in [Metric::Accuracy, Metric::Mae, Metric::Mse] {
                let want = lstmc::train::metric(metric, kind, &y, &target);
                let mut t = Trainer::new(spec.clone(), fx.weights(&spec), kind, opt, options);
                t.set_metric(Some(metric));
                let (_, got) = t.train_on_batch(&x, &target).unwrap();
                assert_eq!(
                    got,
                    Some(want),
                    "{name} {kind:?} {metric:?} of {y:?} against {target:?}"
                );
                scored += 1;
            }
            let mut t = Trainer::new(spec.clone(), fx.weights(&spec), kind, opt, options);
            t.set_metric(None);
            assert_eq!(t.train_on_batch(&x, &target).unwrap().1, None, "{name}");
        }
    }
    assert!(scored > 0);
}

/// `metrics=accuracy|mae|mse` give Keras 3's values (tests/fixtures/metrics, made by
/// its script from Keras's own metrics, chosen as Keras's `compile` chooses them):
/// binary accuracy for one output column, sparse categorical for class indices,
/// categorical otherwise, whatever the loss; `mae` and `mse` over every element.
#[test]
fn metrics_are_keras_metrics() {
    use lstmc::model::{Loss, Metric};
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics/keras_metrics.json"
    ))
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let flat = |v: &serde_json::Value| -> Vec<f64> {
        fn walk(v: &serde_json::Value, out: &mut Vec<f64>) {
            match v {
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
                other => out.push(other.as_f64().unwrap()),
            }
        }
        let mut out = Vec::new();
        walk(v, &mut out);
        out
    };
    let shape = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect()
    };
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let kind = Loss::from_name(c["loss"].as_str().unwrap()).unwrap();
        let y =
            ndarray::ArrayD::from_shape_vec(shape(&c["y_pred_shape"]), flat(&c["y_pred"])).unwrap();
        let t =
            ndarray::ArrayD::from_shape_vec(shape(&c["y_true_shape"]), flat(&c["y_true"])).unwrap();
        for metric in [Metric::Accuracy, Metric::Mae, Metric::Mse] {
            let want = c[metric.name()].as_f64().unwrap();
            let got = lstmc::train::metric(metric, kind, &y, &t);
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{name} {metric:?}: {got} against Keras's {want}"
            );
        }
    }
}

/// `validation_split` cuts the samples where Keras 3 does: the first
/// ⌊n · (1 − split)⌋ train and the rest validate (10 samples at 0.25: 7 and 3, where
/// rounding the validation set down gave 8 and 2); the epoch's validation loss is that
/// of the weights after it on those samples. Splits that leave either set empty are
/// refused, as Keras refuses them.
#[test]
fn validation_split_takes_the_samples_keras_takes() {
    use ndarray::{s, ArrayD, IxDyn};
    let mut net = lstmc::Model::parse(
        "Dense 1 input_dim=1\ncompile loss=mse optimizer=sgd learning_rate=0.01\n",
    )
    .unwrap()
    .compile(&Default::default())
    .unwrap();
    let x = ArrayD::<f32>::from_shape_fn(IxDyn(&[10, 1]), |i| i[0] as f32 / 10.0);
    let y = x.mapv(|v| 3.0 * v - 1.0);
    let mut o = net.fit_options();
    o.epochs = 1;
    o.batch_size = 4;
    o.shuffle = false;
    for (split, n_val) in [(0.25, 3), (0.33, 4), (0.1, 1), (0.01, 1)] {
        o.validation_split = split;
        let logs = net.fit(x.view(), y.view(), &o).unwrap();
        let (val_loss, _) = logs[0].validation.expect("a validation set");
        let tail = s![10 - n_val.., ..];
        let (want, _) = net
            .evaluate(x.slice(tail).into_dyn(), y.slice(tail).into_dyn(), 4)
            .unwrap();
        assert_eq!(val_loss, want, "split {split}: {n_val} validation samples");
    }
    for split in [0.95, 1.0, -0.1] {
        o.validation_split = split;
        let err = net.fit(x.view(), y.view(), &o).unwrap_err().to_string();
        assert!(
            err.contains("too few to split") || err.contains("must be in [0, 1)"),
            "{split}: {err}"
        );
    }
}

/// The epoch an error names, from "at epoch N,".
fn named_epoch(err: &str) -> usize {
    err.split("at epoch ")
        .nth(1)
        .or_else(|| err.split("after epoch ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no epoch in: {err}"))
}

/// A run that diverges well past its first checkpoint (every 16 epochs), shuffled and
/// with a validation split: `fit` goes back to the checkpoint and replays the epochs
/// since, and keeps the bits of a run of as many epochs as the error names.
#[test]
fn a_shuffled_run_diverging_past_a_checkpoint_keeps_the_epoch_before() {
    let x = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[10, 2]), |i| {
        ((i[0] * 7 + i[1] * 3) % 5) as f64 * 0.5 + 0.5
    });
    let how = How {
        shuffle: true,
        split: 0.2,
        reset_each_epoch: true,
    };
    diverges_past_a_checkpoint(b"Dense 1 input_dim=2\n", &x, 0.2, 200, how);
}

/// As above, for a stateful layer whose states are never reset: the checkpoint carries
/// them, and the replay starts from them.
#[test]
fn a_stateful_run_diverging_past_a_checkpoint_keeps_the_epoch_before() {
    let x = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[8, 1, 2]), |i| {
        ((i[0] * 7 + i[2] * 3) % 5) as f64 * 0.2 + 0.1
    });
    let model = b"SimpleRNN 1 input_dim=2 input_length=1 activation=linear stateful\n";
    let how = How {
        shuffle: false,
        split: 0.0,
        reset_each_epoch: false,
    };
    diverges_past_a_checkpoint(model, &x, 1e-4, 300, how);
}

/// Fits `model` by SGD at `rate`, in batches of 2, on `x` for up to `epochs` epochs, and
/// asserts that it diverges after epoch 17 and keeps the epoch before.
fn diverges_past_a_checkpoint(
    model: &[u8],
    x: &ndarray::ArrayD<f64>,
    rate: f64,
    epochs: usize,
    how: How,
) {
    let (err, kept) = fit_sgd(model, x, rate, 2, epochs, how);
    let err = err.expect_err("a run that diverges");
    assert!(named_epoch(&err) > 17, "{err}");
    assert_kept_epoch(model, x, rate, 2, how, &err, &kept);
}
