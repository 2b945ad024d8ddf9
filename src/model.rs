//! The checked description of a model: what a `.model` file means, with
//! Keras's defaults filled in. The front end produces it; lowering turns it
//! into IR; the runtime and the summary read it.

use crate::front::source::{SourceFile, Span};
use std::fmt;

/// The layer kinds of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// Long short-term memory, gates `i, f, c, o`.
    Lstm,
    /// Gated recurrent unit, gates `z, r, h`.
    Gru,
    /// `h = act(x W + h U + b)`.
    SimpleRnn,
    /// `act(x W + b)` on the last axis.
    Dense,
}

impl LayerKind {
    /// The name as written in `.model` files and Keras.
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Lstm => "LSTM",
            LayerKind::Gru => "GRU",
            LayerKind::SimpleRnn => "SimpleRNN",
            LayerKind::Dense => "Dense",
        }
    }

    /// Keras's default layer-name stem (`lstm`, `simple_rnn`, ...).
    pub fn keras_stem(self) -> &'static str {
        match self {
            LayerKind::Lstm => "lstm",
            LayerKind::Gru => "gru",
            LayerKind::SimpleRnn => "simple_rnn",
            LayerKind::Dense => "dense",
        }
    }

    /// Parses a layer kind as written.
    pub fn from_name(s: &str) -> Option<LayerKind> {
        Some(match s {
            "LSTM" => LayerKind::Lstm,
            "GRU" => LayerKind::Gru,
            "SimpleRNN" => LayerKind::SimpleRnn,
            "Dense" => LayerKind::Dense,
            _ => return None,
        })
    }

    /// Whether the layer runs over time.
    pub fn is_recurrent(self) -> bool {
        self != LayerKind::Dense
    }

    /// How many gate blocks its kernels have (4 for LSTM, 3 for GRU, 1 otherwise).
    pub fn gates(self) -> usize {
        match self {
            LayerKind::Lstm => 4,
            LayerKind::Gru => 3,
            LayerKind::SimpleRnn | LayerKind::Dense => 1,
        }
    }
}

/// Activation functions, with Keras 3's formulas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `x`
    Linear,
    /// `tanh(x)`
    Tanh,
    /// `1 / (1 + exp(-x))`
    Sigmoid,
    /// Keras 3: `clip(x/6 + 1/2, 0, 1)`
    HardSigmoid,
    /// `max(x, 0)`
    Relu,
    /// over the last axis (Dense only)
    Softmax,
}

impl Activation {
    /// Every activation's name, in the order of the spec.
    pub const NAMES: [&'static str; 6] = [
        "linear",
        "tanh",
        "sigmoid",
        "hard_sigmoid",
        "relu",
        "softmax",
    ];

    /// Whether the derivative is a function of the output alone (`1 - y²` for tanh,
    /// `y·(1 - y)` for sigmoid, as TensorFlow's and JAX's gradients compute them), so
    /// that a training step need not keep the pre-activation for the backward pass.
    /// ReLU and hard sigmoid take theirs from the input, as Keras does.
    pub fn grad_from_output(self) -> bool {
        matches!(
            self,
            Activation::Linear | Activation::Tanh | Activation::Sigmoid | Activation::Softmax
        )
    }

    /// The name as written.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::HardSigmoid => "hard_sigmoid",
            Activation::Relu => "relu",
            Activation::Softmax => "softmax",
        }
    }

    /// Parses an activation name.
    pub fn from_name(s: &str) -> Option<Activation> {
        Some(match s {
            "linear" => Activation::Linear,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "hard_sigmoid" => Activation::HardSigmoid,
            "relu" => Activation::Relu,
            "softmax" => Activation::Softmax,
            _ => return None,
        })
    }
}

/// Weight initializers (Keras 3 formulas; see [`crate::init`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Initializer {
    /// `U(-l, l)`, `l = sqrt(6 / (fan_in + fan_out))`
    GlorotUniform,
    /// truncated normal, `stddev = sqrt(2 / (fan_in + fan_out))`
    GlorotNormal,
    /// `U(-l, l)`, `l = sqrt(6 / fan_in)`
    HeUniform,
    /// truncated normal, `stddev = sqrt(2 / fan_in)`
    HeNormal,
    /// `U(-l, l)`, `l = sqrt(3 / fan_in)`
    LecunUniform,
    /// truncated normal, `stddev = sqrt(1 / fan_in)`
    LecunNormal,
    /// a random orthogonal matrix (QR of a normal matrix, signs fixed)
    Orthogonal,
    /// all zeros
    Zeros,
    /// all ones
    Ones,
}

impl Initializer {
    /// Every initializer's name.
    pub const NAMES: [&'static str; 9] = [
        "glorot_uniform",
        "glorot_normal",
        "he_uniform",
        "he_normal",
        "lecun_uniform",
        "lecun_normal",
        "orthogonal",
        "zeros",
        "ones",
    ];

    /// Parses an initializer name.
    pub fn from_name(s: &str) -> Option<Initializer> {
        Some(match s {
            "glorot_uniform" => Initializer::GlorotUniform,
            "glorot_normal" => Initializer::GlorotNormal,
            "he_uniform" => Initializer::HeUniform,
            "he_normal" => Initializer::HeNormal,
            "lecun_uniform" => Initializer::LecunUniform,
            "lecun_normal" => Initializer::LecunNormal,
            "orthogonal" => Initializer::Orthogonal,
            "zeros" => Initializer::Zeros,
            "ones" => Initializer::Ones,
            _ => return None,
        })
    }
}

/// One layer, every option resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// The kind.
    pub kind: LayerKind,
    /// Keras's name for it (`lstm`, `lstm_1`, `dense`).
    pub name: String,
    /// Output features.
    pub units: usize,
    /// Features of its input (inferred for all but the first layer).
    pub input_features: usize,
    /// `activation` (default `tanh` for recurrent layers, `linear` for Dense).
    pub activation: Activation,
    /// `recurrent_activation` (LSTM, GRU; default `sigmoid`).
    pub recurrent_activation: Activation,
    /// `use_bias`
    pub use_bias: bool,
    /// `return_sequences`
    pub return_sequences: bool,
    /// `stateful`
    pub stateful: bool,
    /// `go_backwards`
    pub go_backwards: bool,
    /// `unit_forget_bias` (LSTM)
    pub unit_forget_bias: bool,
    /// `reset_after` (GRU)
    pub reset_after: bool,
    /// `kernel_initializer`
    pub kernel_initializer: Initializer,
    /// `recurrent_initializer`
    pub recurrent_initializer: Initializer,
    /// `bias_initializer`
    pub bias_initializer: Initializer,
    /// `dropout` (training only)
    pub dropout: f64,
    /// `recurrent_dropout` (training only)
    pub recurrent_dropout: f64,
    /// The statement it came from.
    pub span: Span,
}

/// A weight tensor of a layer, named and shaped as Keras names and shapes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightSpec {
    /// `kernel`, `recurrent_kernel` or `bias`.
    pub name: &'static str,
    /// Keras's shape.
    pub shape: Vec<usize>,
}

impl LayerSpec {
    /// The layer's weights in Keras order: kernel, recurrent_kernel, bias.
    pub fn weights(&self) -> Vec<WeightSpec> {
        let g = self.kind.gates() * self.units;
        let mut w = vec![WeightSpec {
            name: "kernel",
            shape: vec![self.input_features, g],
        }];
        if self.kind.is_recurrent() {
            w.push(WeightSpec {
                name: "recurrent_kernel",
                shape: vec![self.units, g],
            });
        }
        if self.use_bias {
            let shape = if self.kind == LayerKind::Gru && self.reset_after {
                vec![2, g]
            } else {
                vec![g]
            };
            w.push(WeightSpec {
                name: "bias",
                shape,
            });
        }
        w
    }

    /// The number of trainable parameters, as Keras counts them.
    pub fn param_count(&self) -> u128 {
        self.weights()
            .iter()
            .map(|w| w.shape.iter().map(|&d| d as u128).product::<u128>())
            .sum()
    }

    /// The recurrent state slots: `h` (and `c` for LSTM); none for Dense.
    pub fn state_names(&self) -> &'static [&'static str] {
        match self.kind {
            LayerKind::Lstm => &["h", "c"],
            LayerKind::Gru | LayerKind::SimpleRnn => &["h"],
            LayerKind::Dense => &[],
        }
    }
}

/// The input of the model, from the first layer's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputSpec {
    /// Features per step (`input_dim`).
    pub features: usize,
    /// Steps per sample (`input_length`); `None` when taken from the data.
    /// A Dense-only model without it takes 2-D input `(batch, features)`.
    pub time: Option<usize>,
    /// Fixed batch size (`batch_size` on the first layer, or `fit batch_size=`).
    pub batch: Option<usize>,
    /// Whether the input has a time axis.
    pub sequence: bool,
}

/// Loss functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// mean squared error
    Mse,
    /// mean absolute error
    Mae,
    /// cross-entropy against one-hot targets
    CategoricalCrossentropy,
    /// cross-entropy against integer class targets
    SparseCategoricalCrossentropy,
    /// binary cross-entropy
    BinaryCrossentropy,
}

impl Loss {
    /// The names, as written.
    pub const NAMES: [&'static str; 5] = [
        "mse",
        "mae",
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
        "binary_crossentropy",
    ];

    /// Every loss, in the order of [`Loss::NAMES`]. (A function, not an associated
    /// constant, which cbindgen would put in the C header.)
    pub fn all() -> [Loss; 5] {
        [
            Loss::Mse,
            Loss::Mae,
            Loss::CategoricalCrossentropy,
            Loss::SparseCategoricalCrossentropy,
            Loss::BinaryCrossentropy,
        ]
    }

    /// The name, as written.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Mse => Loss::NAMES[0],
            Loss::Mae => Loss::NAMES[1],
            Loss::CategoricalCrossentropy => Loss::NAMES[2],
            Loss::SparseCategoricalCrossentropy => Loss::NAMES[3],
            Loss::BinaryCrossentropy => Loss::NAMES[4],
        }
    }

    /// Parses a loss name.
    pub fn from_name(s: &str) -> Option<Loss> {
        Some(match s {
            "mse" => Loss::Mse,
            "mae" => Loss::Mae,
            "categorical_crossentropy" => Loss::CategoricalCrossentropy,
            "sparse_categorical_crossentropy" => Loss::SparseCategoricalCrossentropy,
            "binary_crossentropy" => Loss::BinaryCrossentropy,
            _ => return None,
        })
    }
}

impl Optimizer {
    /// The names, as written.
    pub const NAMES: [&'static str; 3] = ["sgd", "adam", "rmsprop"];

    /// The optimizer named, with Keras 3's default hyper-parameters.
    pub fn keras_default(name: &str) -> Option<Optimizer> {
        Some(match name {
            "sgd" => Optimizer::Sgd {
                learning_rate: 0.01,
                momentum: 0.0,
                nesterov: false,
            },
            "adam" => Optimizer::Adam {
                learning_rate: 0.001,
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
            "rmsprop" => Optimizer::Rmsprop {
                learning_rate: 0.001,
                rho: 0.9,
                momentum: 0.0,
                epsilon: 1e-7,
            },
            _ => return None,
        })
    }

    /// The name and hyper-parameters, as `lstmc ir` prints them.
    pub fn describe(&self) -> String {
        match *self {
            Optimizer::Sgd {
                learning_rate,
                momentum,
                nesterov,
            } => format!("sgd lr={learning_rate} momentum={momentum} nesterov={nesterov}"),
            Optimizer::Adam {
                learning_rate,
                beta_1,
                beta_2,
                epsilon,
            } => {
                format!("adam lr={learning_rate} beta_1={beta_1} beta_2={beta_2} epsilon={epsilon}")
            }
            Optimizer::Rmsprop {
                learning_rate,
                rho,
                momentum,
                epsilon,
            } => format!(
                "rmsprop lr={learning_rate} rho={rho} momentum={momentum} epsilon={epsilon}"
            ),
        }
    }

    /// The learning rate of step `t` (1-based) as the update rule uses it: Adam's is
    /// bias-corrected, `lr · sqrt(1 - beta_2^t) / (1 - beta_1^t)`, as Keras 3 computes it.
    pub fn step_rate(&self, t: u64) -> f64 {
        match *self {
            Optimizer::Adam {
                learning_rate,
                beta_1,
                beta_2,
                ..
            } => {
                let t = t as f64;
                learning_rate * (1.0 - beta_2.powf(t)).sqrt() / (1.0 - beta_1.powf(t))
            }
            Optimizer::Sgd { learning_rate, .. } | Optimizer::Rmsprop { learning_rate, .. } => {
                learning_rate
            }
        }
    }

    /// The same optimizer with another learning rate.
    pub fn with_learning_rate(mut self, lr: f64) -> Optimizer {
        match &mut self {
            Optimizer::Sgd { learning_rate, .. }
            | Optimizer::Adam { learning_rate, .. }
            | Optimizer::Rmsprop { learning_rate, .. } => *learning_rate = lr,
        }
        self
    }
}

/// Optimizers with their hyper-parameters (Keras 3 defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// SGD
    Sgd {
        /// learning rate (0.01)
        learning_rate: f64,
        /// momentum (0)
        momentum: f64,
        /// Nesterov momentum (false)
        nesterov: bool,
    },
    /// Adam
    Adam {
        /// learning rate (0.001)
        learning_rate: f64,
        /// 0.9
        beta_1: f64,
        /// 0.999
        beta_2: f64,
        /// 1e-7
        epsilon: f64,
    },
    /// RMSprop
    Rmsprop {
        /// learning rate (0.001)
        learning_rate: f64,
        /// 0.9
        rho: f64,
        /// 0
        momentum: f64,
        /// 1e-7
        epsilon: f64,
    },
}

/// Metrics reported during training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// classification accuracy
    Accuracy,
    /// mean absolute error
    Mae,
    /// mean squared error
    Mse,
}

impl Metric {
    /// Its name in Keras's logs and in `metrics=`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::Mae => "mae",
            Metric::Mse => "mse",
        }
    }
}

/// The `compile` statement.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileSpec {
    /// `loss=` (default `mse`)
    pub loss: Loss,
    /// `optimizer=` and its hyper-parameters (default `rmsprop`, as Keras's `compile`)
    pub optimizer: Optimizer,
    /// `metrics=`
    pub metrics: Vec<Metric>,
    /// The statement.
    pub span: Span,
}

/// When stateful layers' states are zeroed during `fit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetStates {
    /// After every epoch (the tutorials' `model.reset_states()` loop).
    Epoch,
    /// Never.
    Never,
}

/// The `fit` statement.
#[derive(Clone, Debug, PartialEq)]
pub struct FitSpec {
    /// `epochs=` (1)
    pub epochs: usize,
    /// `batch_size=` (32, or the first layer's)
    pub batch_size: Option<usize>,
    /// `shuffle=` (true, as Keras; false for stateful models unless written)
    pub shuffle: Option<bool>,
    /// `reset_states=` (epoch)
    pub reset_states: ResetStates,
    /// `validation_split=` (0)
    pub validation_split: f64,
    /// `seed=`
    pub seed: Option<u64>,
    /// The statement.
    pub span: Span,
}

/// Where data comes from (`data` statement).
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// A data set compiled into lstmc.
    Builtin {
        /// `builtin=` (butterfly)
        name: String,
        /// `window=` (4)
        window: usize,
        /// `features=` (1)
        features: usize,
    },
    /// NumPy arrays.
    Npy {
        /// `x=`
        x: String,
        /// `y=`
        y: Option<String>,
    },
    /// A CSV file.
    Csv {
        /// `csv=`
        path: String,
        /// `window=`: cut one series into windows of this length
        window: Option<usize>,
        /// `header=`: the first row is a header
        header: bool,
    },
}

/// The `data` statement.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSpec {
    /// The training data.
    pub source: DataSource,
    /// `predict=`: inputs to predict after training.
    pub predict: Option<String>,
    /// The statement.
    pub span: Span,
}

/// A checked model.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The name (`model NAME`, or the file's stem).
    pub name: String,
    /// The input.
    pub input: InputSpec,
    /// The layers in order.
    pub layers: Vec<LayerSpec>,
    /// `compile`
    pub compile: Option<CompileSpec>,
    /// `fit`
    pub fit: Option<FitSpec>,
    /// `data`
    pub data: Option<DataSpec>,
    /// The source it was read from.
    pub source: SourceFile,
}

/// A shape with a possibly unknown batch or time axis, printed as Keras prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymShape(pub Vec<Option<usize>>);

impl fmt::Display for SymShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self
            .0
            .iter()
            .map(|d| d.map_or("None".to_string(), |d| d.to_string()))
            .collect();
        if dims.len() == 1 {
            write!(f, "({},)", dims[0])
        } else {
            write!(f, "({})", dims.join(", "))
        }
    }
}

impl ModelSpec {
    /// The loss and optimizer of the `compile` line, else Keras's `compile` defaults:
    /// mse and rmsprop.
    pub fn loss_and_optimizer(&self) -> (Loss, Optimizer) {
        match &self.compile {
            Some(c) => (c.loss, c.optimizer),
            None => (
                Loss::Mse,
                Optimizer::keras_default("rmsprop").expect("rmsprop is a known optimizer"),
            ),
        }
    }

    /// Output shape of layer `i`, with unknown batch or time as `None`.
    pub fn output_shape(&self, i: usize) -> SymShape {
        let mut seq = self.input.sequence;
        for l in &self.layers[..=i] {
            if l.kind.is_recurrent() {
                seq = l.return_sequences;
            }
        }
        let units = Some(self.layers[i].units);
        if seq {
            SymShape(vec![self.input.batch, self.input.time, units])
        } else {
            SymShape(vec![self.input.batch, units])
        }
    }

    /// Whether any layer is stateful.
    pub fn is_stateful(&self) -> bool {
        self.layers.iter().any(|l| l.stateful)
    }

    /// Total trainable parameters.
    pub fn param_count(&self) -> u128 {
        self.layers.iter().map(|l| l.param_count()).sum()
    }

    /// Whether the model's output has a time axis.
    pub fn output_is_sequence(&self) -> bool {
        self.output_shape(self.layers.len() - 1).0.len() == 3
    }

    /// The Keras-style summary table that `lstmc check` prints.
    pub fn summary(&self) -> String {
        let rows: Vec<[String; 3]> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                [
                    format!("{} ({})", l.name, l.kind.name()),
                    self.output_shape(i).to_string(),
                    group_thousands(l.param_count()),
                ]
            })
            .collect();
        let w = [
            rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(14) + 2,
            rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(12) + 2,
            rows.iter().map(|r| r[2].len()).max().unwrap_or(0).max(7) + 2,
        ];
        let line = |l: char, m: char, r: char, fill: char| {
            format!(
                "{l}{}{m}{}{m}{}{r}\n",
                fill.to_string().repeat(w[0]),
                fill.to_string().repeat(w[1]),
                fill.to_string().repeat(w[2])
            )
        };
        let row = |a: &str, b: &str, c: &str| {
            format!(
                "│ {a:<w0$} │ {b:<w1$} │ {c:>w2$} │\n",
                w0 = w[0] - 2,
                w1 = w[1] - 2,
                w2 = w[2] - 2
            )
        };
        let mut s = format!("Model: \"{}\"\n", self.name);
        s += &line('┌', '┬', '┐', '─');
        s += &row("Layer (type)", "Output Shape", "Param #");
        s += &line('╞', '╪', '╡', '═');
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                s += &line('├', '┼', '┤', '─');
            }
            s += &row(&r[0], &r[1], &r[2]);
        }
        s += &line('└', '┴', '┘', '─');
        let total = self.param_count();
        s += &format!(
            " Total params: {} ({})\n",
            group_thousands(total),
            human_bytes(total * 4)
        );
        s += &format!(
            " Trainable params: {} ({})\n",
            group_thousands(total),
            human_bytes(total * 4)
        );
        s += " Non-trainable params: 0 (0.00 B)\n";
        s
    }
}

/// `66560` -> `66,560`.
pub fn group_thousands(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in Keras's summary units (`266.05 KB`, powers of 1024).
pub fn human_bytes(n: u128) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", units[u])
}
