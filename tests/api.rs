//! The Rust API: one compiled model serving many threads, stateful streams kept
//! apart, Keras's numbers through the façade, and typed errors.

mod common;

use common::*;
use lstmc::{CompileOptions, Error, Model};
use ndarray::{ArrayD, IxDyn};

const STREAMING: &str =
    "LSTM 16 input_dim=3 input_length=2 batch_size=1 stateful return_sequences\n\
                         GRU 8 stateful\n\
                         Dense 4 activation=softmax\n";

/// Sequence `k`: 25 samples of shape [1, 2, 3], different for every k.
fn sequence(k: usize) -> Vec<ArrayD<f32>> {
    (0..25)
        .map(|t| {
            ArrayD::from_shape_fn(IxDyn(&[1, 2, 3]), |i| {
                ((k * 31 + t * 7 + i[1] * 3 + i[2]) as f32 * 0.37).sin()
            })
        })
        .collect()
}

#[test]
fn eight_threads_share_one_compiled_model_each_with_its_own_states() {
    let mut net = Model::parse(STREAMING)
        .unwrap()
        .compile(&CompileOptions {
            seed: 3,
            ..Default::default()
        })
        .unwrap();
    let p = net.predictor();
    // Single-threaded: each sequence on its own stream, sample by sample.
    let want: Vec<Vec<ArrayD<f32>>> = (0..8)
        .map(|k| {
            let mut s = p.stream();
            sequence(k)
                .iter()
                .map(|x| p.predict_stream(&mut s, x).unwrap().y)
                .collect()
        })
        .collect();
    // The same streams interleaved on 8 threads; each also predicts stateless batches of
    // its own size, so that threads compile new shapes while others run.
    let got: Vec<Vec<ArrayD<f32>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|k| {
                let p = p.clone();
                scope.spawn(move || {
                    let mut s = p.stream();
                    let mut ys = Vec::new();
                    for x in sequence(k) {
                        ys.push(p.predict_stream(&mut s, &x).unwrap().y);
                        let batch = 1 + k % 4;
                        let err = p
                            .predict(&ArrayD::zeros(IxDyn(&[batch + 1, 2, 3])))
                            .unwrap_err();
                        assert!(err.to_string().contains("stateful"), "{err}");
                    }
                    ys
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "sequence {k}");
    }
    // The streams did not leak into one another: sequences differ, and so do outputs.
    assert_ne!(want[0], want[1]);
}

#[test]
fn stateless_predictions_from_eight_threads_at_several_batch_sizes() {
    let mut net = Model::parse("GRU 12 input_dim=2 input_length=6 go_backwards\nDense 3\n")
        .unwrap()
        .compile(&Default::default())
        .unwrap();
    let xs: Vec<ArrayD<f32>> = (0..8)
        .map(|k| {
            ArrayD::from_shape_fn(IxDyn(&[1 + k % 5, 6, 2]), |i| {
                ((k + i[0] * 5 + i[1] * 2 + i[2]) as f32 * 0.3).cos()
            })
        })
        .collect();
    let want: Vec<ArrayD<f32>> = xs.iter().map(|x| net.predict(x.view()).unwrap()).collect();
    let p = net.predictor();
    std::thread::scope(|scope| {
        for (x, w) in xs.iter().zip(&want) {
            let p = p.clone();
            scope.spawn(move || {
                for _ in 0..20 {
                    assert_eq!(&p.predict(x).unwrap(), w);
                }
            });
        }
    });
}

#[test]
fn the_api_reproduces_a_keras_fixture_train_block() {
    let name = fixture_names()
        .into_iter()
        .find(|n| load(n).json["train"]["optimizer"] == "adam")
        .expect("a fixture trained with adam");
    let fx = load(&name);
    let spec = fx.spec();
    let model = Model::parse(&fx.model_text()).unwrap();
    let mut net = model
        .compile(&CompileOptions {
            loss: Some(fx.loss_kind()),
            optimizer: Some(fx.optimizer()),
            ..Default::default()
        })
        .unwrap();
    net.set_weights(&fx.weights(&spec)).unwrap();
    let x = array(&fx.batches()[0]["x"]).mapv(|v| v as f32);
    let y = array(&fx.json["loss"]["target"]).mapv(|v| v as f32);
    for (k, want) in fx.json["train"]["losses"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        net.reset_states();
        let (got, _) = net.train_on_batch(x.view(), y.view()).unwrap();
        let want = want.as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{name} step {k}: {got} vs Keras {want}"
        );
    }
    let want = fx.final_weights(&spec);
    for ((n, got), (_, want)) in net.weights().tensors.iter().zip(&want.tensors) {
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(
                (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                "{name} {n}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn errors_are_typed() {
    assert!(matches!(
        Model::parse("LSTM 4 input_dim=2\nDense\n"),
        Err(Error::Model(_))
    ));
    assert!(matches!(
        Model::from_file("/nonexistent/m.model"),
        Err(Error::Io { .. })
    ));
    let mut net = Model::parse(STREAMING)
        .unwrap()
        .compile(&Default::default())
        .unwrap();
    let wrong = ArrayD::<f32>::zeros(IxDyn(&[1, 2, 5]));
    assert!(matches!(net.predict(wrong.view()), Err(Error::Usage(_))));
    let nan = ArrayD::<f32>::from_elem(IxDyn(&[1, 2, 3]), f32::NAN);
    let y = ArrayD::<f32>::zeros(IxDyn(&[1, 2, 4]));
    assert!(matches!(
        net.train_on_batch(nan.view(), y.view()),
        Err(Error::Data(_))
    ));
    assert!(matches!(
        net.set_state(2, "h", &ArrayD::zeros(IxDyn(&[1, 4]))),
        Err(Error::Usage(_))
    ));
    assert!(matches!(
        net.load_weights("/nonexistent/w.safetensors"),
        Err(Error::Io { .. }) | Err(Error::Weights(_))
    ));
    let mut w = net.weights();
    w.tensors.pop();
    assert!(matches!(net.set_weights(&w), Err(Error::Weights(_))));
    // A stateful model trained on one batch size, then given another, says what to do.
    let mut net =
        Model::parse("SimpleRNN 3 input_dim=1 input_length=2 stateful\ncompile loss=mse\n")
            .unwrap()
            .compile(&Default::default())
            .unwrap();
    let (x1, y1) = (
        ArrayD::<f32>::zeros(IxDyn(&[1, 2, 1])),
        ArrayD::<f32>::zeros(IxDyn(&[1, 3])),
    );
    let (x2, y2) = (
        ArrayD::<f32>::zeros(IxDyn(&[2, 2, 1])),
        ArrayD::<f32>::zeros(IxDyn(&[2, 3])),
    );
    net.train_on_batch(x1.view(), y1.view()).unwrap();
    match net.train_on_batch(x2.view(), y2.view()) {
        Err(Error::Usage(m)) => assert_eq!(
            m,
            "model `model` is stateful and carries states for another batch size than this \
             batch of 2; call reset_states() first, which starts from zero states"
        ),
        other => panic!("{other:?}"),
    }
    net.reset_states();
    net.train_on_batch(x2.view(), y2.view()).unwrap();
}

/// A training step runs with denormal floats flushed to zero, as TensorFlow runs its CPU
/// threads (x86-64's MXCSR FTZ and DAZ bits, AArch64's FPCR FZ bit): one SGD step (learning rate 1, mse) on `Dense 1`
/// with input 1e-20, kernel 0 and target 1e-20 has the gradient -2e-40, denormal, so the
/// kernel stays 0; and with input 1e-40 (denormal, taken as 0) and target 1e30, the
/// gradient, -2e-10 if the input counted, is 0 as well. The caller gets its own mode back after the step.
#[test]
fn a_training_step_flushes_denormals_and_restores_the_callers_mode() {
    use lstmc::model::{Loss, Optimizer};
    let spec = lstmc::front::load("d.model", b"Dense 1 input_dim=1 activation=linear\n").unwrap();
    let sgd = Optimizer::Sgd {
        learning_rate: 1.0,
        momentum: 0.0,
        nesterov: false,
    };
    for (x, target) in [(1e-20f32, 1e-20f64), (1e-40, 1e30)] {
        let mut w = lstmc::weights::Weights::init(&spec, 0);
        for (_, t) in &mut w.tensors {
            t.fill(0.0);
        }
        let mut t = lstmc::train::Trainer::new(spec.clone(), w, Loss::Mse, sgd, Default::default());
        let x = ArrayD::from_elem(IxDyn(&[1, 1]), x);
        t.train_on_batch(&x, &ArrayD::from_elem(IxDyn(&[1, 1]), target))
            .unwrap();
        let kernel = t.weights().get(0, "kernel").unwrap().clone();
        assert_eq!(
            kernel.iter().copied().collect::<Vec<f64>>(),
            [0.0],
            "input {x}"
        );
        let here = std::hint::black_box(1e-20f32) * std::hint::black_box(-2e-20f32);
        assert!(here != 0.0, "the caller's own mode after the step");
    }
}
