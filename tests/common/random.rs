//! Random models for differential tests: one to three layers of any kind and
//! option, with random weights and inputs.

use lstmc::model::ModelSpec;
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;

/// A random model: its `.model` text, batch size and number of calls.
#[derive(Clone, Debug)]
pub struct RandomModel {
    pub text: String,
    pub batch: usize,
    pub seed: u64,
}

fn activation() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("tanh"),
        Just("sigmoid"),
        Just("hard_sigmoid"),
        Just("relu"),
        Just("linear")
    ]
}

/// Gate activations: bounded, as gates are in practice (an unbounded gate overflows
/// f32 long before f64, which would compare precision, not correctness).
fn gate_activation() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("tanh"), Just("sigmoid"), Just("hard_sigmoid")]
}

/// Activations whose derivative exists everywhere, for finite differences.
fn smooth_activation() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("tanh"), Just("sigmoid"), Just("linear")]
}

fn smooth_gate_activation() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("tanh"), Just("sigmoid")]
}

fn layer(
    first: bool,
    last: bool,
    act: BoxedStrategy<&'static str>,
    ract: BoxedStrategy<&'static str>,
) -> impl Strategy<Value = String> {
    (
        0..4usize,
        1..=70usize,
        (
            act,
            ract,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        (1..=20usize, 1..=40usize, any::<bool>()),
    )
        .prop_map(
            move |(
                kind,
                units,
                (act, ract, seq, back, bias, reset_after),
                (dim, len, dense_act_softmax),
            )| {
                let kind = ["LSTM", "GRU", "SimpleRNN", "Dense"][kind];
                let mut s = format!("{kind} {units}");
                if first {
                    s += &format!(" input_dim={dim} input_length={len}");
                }
                if kind == "Dense" {
                    let a = if dense_act_softmax && last {
                        "softmax"
                    } else {
                        act
                    };
                    s += &format!(" activation={a}");
                } else {
                    s += &format!(" activation={act}");
                    if kind != "SimpleRNN" {
                        s += &format!(" recurrent_activation={ract}");
                    }
                    // Every recurrent layer but the last returns sequences, so the next can read them.
                    if seq || !last {
                        s += " return_sequences";
                    }
                    if back {
                        s += " go_backwards";
                    }
                    if kind == "GRU" && !reset_after {
                        s += " reset_after=false";
                    }
                }
                if !bias {
                    s += " use_bias=false";
                }
                s
            },
        )
}

/// One to three layers; any of them may be stateful (then the batch size is fixed).
pub fn random_model() -> impl Strategy<Value = RandomModel> {
    models(
        || activation().boxed(),
        || gate_activation().boxed(),
        any::<bool>().boxed(),
    )
}

/// One to three layers with smooth activations only (no relu, no hard sigmoid) and no
/// stateful layer: models whose loss finite differences can check. Drawn as such rather
/// than filtered from [`random_model`], which rejected four draws in five.
pub fn smooth_model() -> impl Strategy<Value = RandomModel> {
    models(
        || smooth_activation().boxed(),
        || smooth_gate_activation().boxed(),
        Just(false).boxed(),
    )
}

fn models(
    act: fn() -> BoxedStrategy<&'static str>,
    ract: fn() -> BoxedStrategy<&'static str>,
    stateful: BoxedStrategy<bool>,
) -> impl Strategy<Value = RandomModel> {
    (1..=3usize, 1..=9usize, any::<u64>(), stateful)
        .prop_flat_map(move |(n, batch, seed, stateful)| {
            let layers: Vec<BoxedStrategy<String>> = (0..n)
                .map(|i| layer(i == 0, i == n - 1, act(), ract()).boxed())
                .collect();
            (layers, Just(batch), Just(seed), Just(stateful))
        })
        .prop_map(|(layers, batch, seed, stateful)| {
            let mut lines = layers;
            if stateful {
                for l in lines.iter_mut().filter(|l| !l.starts_with("Dense")) {
                    *l += " stateful";
                }
                lines[0] += &format!(" batch_size={batch}");
            }
            RandomModel {
                text: lines.join("\n") + "\n",
                batch,
                seed,
            }
        })
}

impl RandomModel {
    pub fn spec(&self) -> ModelSpec {
        lstmc::front::load("random.model", self.text.as_bytes())
            .unwrap_or_else(|d| panic!("{}\n{}", self.text, d.render()))
    }

    /// Weights drawn uniformly with a scale that keeps activations in their interesting range,
    /// rounded to f32 so that every engine computes with the same numbers.
    pub fn weights(&self, spec: &ModelSpec) -> lstmc::weights::Weights {
        let mut rng = lstmc::init::stream(self.seed, 99, 0);
        let mut w = lstmc::weights::Weights::init(spec, self.seed);
        for (_, t) in &mut w.tensors {
            let fan = t.shape()[0].max(1) as f64;
            let a = 1.2 / fan.sqrt();
            t.mapv_inplace(|_| rand::Rng::random_range(&mut rng, -a..a) as f32 as f64);
        }
        w
    }

    /// `calls` consecutive input batches.
    pub fn inputs(&self, spec: &ModelSpec, calls: usize) -> Vec<ArrayD<f64>> {
        let mut rng = lstmc::init::stream(self.seed, 98, 1);
        let shape = [self.batch, spec.input.time.unwrap(), spec.input.features];
        (0..calls)
            .map(|_| {
                ArrayD::from_shape_fn(IxDyn(&shape), |_| {
                    rand::Rng::random_range(&mut rng, -1.5..1.5)
                })
            })
            .collect()
    }
}
