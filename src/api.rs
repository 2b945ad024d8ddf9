//! The library API: a short chain of owned stages.
//!
//! [`Model::parse`] or [`Model::from_file`] reads and checks a `.model` file;
//! [`Model::compile`] gives a [`Network`]: weights (initialized as Keras does, or
//! loaded), native code compiled per batch shape on first use, and the optimizer.
//! A network predicts, trains and evaluates as Keras's model does, carrying the
//! states of stateful layers from batch to batch. [`Network::predictor`] hands out
//! a [`Predictor`] that many threads can use at once, each stateful sequence with
//! its own [`Stream`](crate::runtime::Stream) of states.
//!
//! ```
//! use lstmc::{CompileOptions, Model};
//! use ndarray::{ArrayD, IxDyn};
//!
//! let model = Model::parse("LSTM 8 input_dim=2 input_length=5\nDense 1\n")?;
//! let mut net = model.compile(&CompileOptions::default())?;
//! let x = ArrayD::<f32>::from_elem(IxDyn(&[4, 5, 2]), 0.5);
//! let y = ArrayD::<f32>::from_elem(IxDyn(&[4, 1]), 1.0);
//! let (first, _) = net.train_on_batch(x.view(), y.view())?;
//! for _ in 0..20 {
//!     net.train_on_batch(x.view(), y.view())?;
//! }
//! let (last, _) = net.evaluate(x.view(), y.view(), 4)?;
//! assert!(last < first);
//! # Ok::<(), lstmc::Error>(())
//! ```

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::jit;
use crate::model::{Loss, Metric, ModelSpec, Optimizer};
use crate::runtime::{CompiledModel, Predictor};
use crate::train::{EpochLog, FitOptions, Trainer};
use crate::weights::Weights;
use ndarray::{ArrayD, ArrayViewD};
use std::path::Path;

/// A parsed and checked model: the first stage.
///
/// ```
/// let model = lstmc::Model::parse("GRU 4 input_dim=3 input_length=7\nDense 2 activation=softmax\n")?;
/// assert_eq!(model.spec().layers.len(), 2);
/// # Ok::<(), lstmc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Model {
    spec: ModelSpec,
}

impl Model {
    /// Parses and checks `.model` source text. Errors are [`Error::Model`], whose
    /// `Display` shows each problem with its line, column and a suggestion.
    ///
    /// ```
    /// let err = lstmc::Model::parse("LSTM 4 input_dim=3 retrun_sequences\n").unwrap_err();
    /// assert!(err.to_string().contains("return_sequences"));
    /// ```
    pub fn parse(source: &str) -> Result<Model> {
        Model::parse_named("model.model", source)
    }

    /// [`Model::parse`], with the file name that diagnostics and the model's default
    /// name use.
    ///
    /// ```
    /// let model = lstmc::Model::parse_named("tiny.model", "Dense 1 input_dim=2\n")?;
    /// assert_eq!(model.spec().name, "tiny");
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn parse_named(file_name: &str, source: &str) -> Result<Model> {
        Ok(Model {
            spec: crate::front::load(file_name, source.as_bytes())?,
        })
    }

    /// Reads, parses and checks a `.model` file.
    ///
    /// ```
    /// let model = lstmc::Model::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/butterfly.model"))?;
    /// assert!(model.spec().is_stateful());
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn from_file(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let bytes = crate::files::read(path)?;
        Ok(Model {
            spec: crate::front::load(&path.display().to_string(), &bytes)?,
        })
    }

    /// The checked model: layers, input, and the `compile`, `fit` and `data` lines.
    ///
    /// ```
    /// let model = lstmc::Model::parse("SimpleRNN 3 input_dim=1 input_length=4\n")?;
    /// assert_eq!(model.spec().layers[0].units, 3);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Keras's `model.summary()`: layers, output shapes and parameter counts.
    ///
    /// ```
    /// let model = lstmc::Model::parse("LSTM 128 input_dim=1 input_length=4\nDense 12\n")?;
    /// assert!(model.summary().contains("66,560"));
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn summary(&self) -> String {
        self.spec.summary()
    }

    /// The second stage: weights initialized as Keras does (seeded), the loss and
    /// optimizer of the `compile` line (or of `options`), native code compiled for each
    /// batch shape on first use. A model that fixes its batch size and length is
    /// compiled for them here, so that errors surface now.
    ///
    /// ```
    /// let net = lstmc::Model::parse("Dense 2 input_dim=3\n")?.compile(&lstmc::CompileOptions::default())?;
    /// assert_eq!(net.weights().tensors.len(), 2);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn compile(self, options: &CompileOptions) -> Result<Network> {
        let spec = self.spec;
        let (loss, optimizer) = spec.loss_and_optimizer();
        let loss = options.loss.unwrap_or(loss);
        let optimizer = options.optimizer.unwrap_or(optimizer);
        let mut jit_options = options.jit;
        jit_options.tuning.threads = options.threads.max(1);
        let weights = Weights::init(&spec, options.seed);
        let runtime = CompiledModel::new(spec.clone(), &weights, jit_options);
        let trainer = Trainer::new(spec.clone(), weights, loss, optimizer, jit_options);
        let mut net = Network {
            trainer,
            runtime,
            stale: false,
        };
        if let (Some(batch), Some(time)) = (spec.input.batch, spec.input.time) {
            let shape: Vec<usize> = if spec.input.sequence {
                vec![batch, time, spec.input.features]
            } else {
                vec![batch, spec.input.features]
            };
            net.runtime
                .compiled(crate::reference::batch_shapes(&spec, &shape)?)?;
        }
        Ok(net)
    }
}

/// How to compile: the weights' seed, threads for large matrix products, and
/// overrides of the model's `compile` line.
///
/// ```
/// let options = lstmc::CompileOptions { seed: 7, threads: 2, ..Default::default() };
/// let net = lstmc::Model::parse("Dense 1 input_dim=1\n")?.compile(&options)?;
/// # Ok::<(), lstmc::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct CompileOptions {
    /// Seed of the weight initializers (Keras's initializers, drawn from this seed).
    pub seed: u64,
    /// Threads the large matrix products may use.
    pub threads: usize,
    /// The loss, instead of the `compile` line's (default there: `mse`).
    pub loss: Option<Loss>,
    /// The optimizer, instead of the `compile` line's (default there: `rmsprop`).
    pub optimizer: Option<Optimizer>,
    /// The compiler's own knobs (unrolling, GEMM crossover).
    pub jit: jit::Options,
}

impl Default for CompileOptions {
    fn default() -> CompileOptions {
        CompileOptions {
            seed: 0,
            threads: 1,
            loss: None,
            optimizer: None,
            jit: jit::Options::default(),
        }
    }
}

/// A compiled model with its weights, optimizer and states: Keras's model, on
/// native code.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let mut net = lstmc::Model::parse("LSTM 3 input_dim=1 input_length=4\n")?
///     .compile(&lstmc::CompileOptions::default())?;
/// let y = net.predict(ArrayD::<f32>::zeros(IxDyn(&[2, 4, 1])).view())?;
/// assert_eq!(y.shape(), &[2, 3]);
/// # Ok::<(), lstmc::Error>(())
/// ```
pub struct Network {
    trainer: Trainer,
    /// The forward code and weights that [`Predictor`]s share.
    runtime: CompiledModel,
    /// Whether `runtime` holds older weights than `trainer`.
    stale: bool,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("model", &self.trainer.spec().name)
            .finish_non_exhaustive()
    }
}

fn owned(x: ArrayViewD<'_, f32>) -> ArrayD<f32> {
    x.as_standard_layout().into_owned()
}

fn finite(what: &str, x: &ArrayViewD<'_, f32>) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Data(format!(
            "{what} has a NaN or infinite value (element {i})"
        ))),
        None => Ok(()),
    }
}

impl Network {
    /// The model.
    ///
    /// ```
    /// let net = lstmc::Model::parse("Dense 1 input_dim=4\n")?.compile(&Default::default())?;
    /// assert_eq!(net.spec().input.features, 4);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn spec(&self) -> &ModelSpec {
        self.trainer.spec()
    }

    /// The metric that training and evaluation report besides the loss: the `compile`
    /// line's `metrics=`, none without one (as in Keras).
    ///
    /// ```
    /// use lstmc::model::Metric;
    /// let net = lstmc::Model::parse("Dense 1 input_dim=4\ncompile loss=mse metrics=mae\n")?
    ///     .compile(&Default::default())?;
    /// assert_eq!(net.metric(), Some(Metric::Mae));
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn metric(&self) -> Option<Metric> {
        self.trainer.metric()
    }

    /// Predicts one batch. Stateful layers start from the states the previous batch
    /// left (as Keras's `predict` does) and keep the new ones; the others start from
    /// zeros.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// let mut net = lstmc::Model::parse("GRU 2 input_dim=1 input_length=3 batch_size=1 stateful\n")?
    ///     .compile(&Default::default())?;
    /// let x = ArrayD::<f32>::from_elem(IxDyn(&[1, 3, 1]), 1.0);
    /// let first = net.predict(x.view())?;
    /// let second = net.predict(x.view())?; // continues from the first batch's state
    /// assert_ne!(first, second);
    /// net.reset_states();
    /// assert_eq!(net.predict(x.view())?, first);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn predict(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        self.trainer.predict_batch(&owned(x))
    }

    /// One optimizer step on a batch (Keras's `train_on_batch`), in one native call:
    /// returns the loss before the step and, when the `compile` line names a metric
    /// ([`Network::metric`]), its value for the batch.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// let mut net = lstmc::Model::parse("Dense 1 input_dim=2\ncompile loss=mse optimizer=sgd learning_rate=0.1\n")?
    ///     .compile(&Default::default())?;
    /// let x = ArrayD::<f32>::from_elem(IxDyn(&[3, 2]), 1.0);
    /// let y = ArrayD::<f32>::from_elem(IxDyn(&[3, 1]), 2.0);
    /// let (before, _) = net.train_on_batch(x.view(), y.view())?;
    /// let (after, _) = net.train_on_batch(x.view(), y.view())?;
    /// assert!(after < before);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn train_on_batch(
        &mut self,
        x: ArrayViewD<'_, f32>,
        y: ArrayViewD<'_, f32>,
    ) -> Result<(f64, Option<f64>)> {
        finite("x", &x)?;
        finite("y", &y)?;
        self.stale = true;
        self.trainer.train_on_batch(&owned(x), &y.mapv(f64::from))
    }

    /// Keras's `fit`: epochs of shuffled batches, validation split, states reset per
    /// epoch; returns each epoch's log. [`Network::fit_options`] gives the model's `fit`
    /// line as options to start from.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// let mut net = lstmc::Model::parse("Dense 1 input_dim=1\ncompile loss=mse optimizer=adam learning_rate=0.1\n")?
    ///     .compile(&Default::default())?;
    /// let x = ArrayD::<f32>::from_shape_fn(IxDyn(&[8, 1]), |i| i[0] as f32 / 8.0);
    /// let y = x.mapv(|v| 2.0 * v + 1.0);
    /// let mut o = net.fit_options();
    /// o.epochs = 50;
    /// o.batch_size = 4;
    /// let logs = net.fit(x.view(), y.view(), &o)?;
    /// assert!(logs.last().unwrap().loss < logs[0].loss);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn fit(
        &mut self,
        x: ArrayViewD<'_, f32>,
        y: ArrayViewD<'_, f32>,
        options: &FitOptions,
    ) -> Result<Vec<EpochLog>> {
        self.fit_with(x, y, options, |_| {})
    }

    /// [`Network::fit`], calling `on_epoch` with each epoch's log as the epoch ends: the
    /// epochs that ran are reported even when a later one fails (a loss that diverges
    /// stops training and keeps the weights of the last good epoch).
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// let mut net = lstmc::Model::parse("Dense 1 input_dim=1\ncompile loss=mse optimizer=sgd\n")?
    ///     .compile(&Default::default())?;
    /// let x = ArrayD::<f32>::zeros(IxDyn(&[4, 1]));
    /// let mut o = net.fit_options();
    /// o.epochs = 3;
    /// let mut seen = Vec::new();
    /// net.fit_with(x.view(), x.view(), &o, |log| seen.push(log.epoch))?;
    /// assert_eq!(seen, [1, 2, 3]);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn fit_with(
        &mut self,
        x: ArrayViewD<'_, f32>,
        y: ArrayViewD<'_, f32>,
        options: &FitOptions,
        on_epoch: impl FnMut(&EpochLog),
    ) -> Result<Vec<EpochLog>> {
        finite("x", &x)?;
        finite("y", &y)?;
        if options.batch_size == 0 || options.epochs == 0 {
            return Err(Error::Usage(
                "fit needs at least one epoch and a batch size of at least 1".into(),
            ));
        }
        let data = Dataset {
            x: x.mapv(f64::from),
            y: Some(y.mapv(f64::from)),
        };
        self.stale = true;
        self.trainer.fit(&data, options, on_epoch)
    }

    /// The model's `fit` line (epochs, batch size, shuffling, validation split,
    /// state resets) with its loss and optimizer, as [`FitOptions`]; Keras's defaults
    /// where the line is silent.
    ///
    /// ```
    /// let net = lstmc::Model::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/butterfly.model"))?
    ///     .compile(&Default::default())?;
    /// assert_eq!(net.fit_options().epochs, 2000);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn fit_options(&self) -> FitOptions {
        FitOptions::for_model(self.spec(), self.trainer.loss(), self.trainer.optimizer())
    }

    /// Loss and, when the `compile` line names one, metric over `x` and `y` in batches
    /// of `batch_size` (Keras's `evaluate`); stateful layers carry their states across
    /// the batches.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// let mut net = lstmc::Model::parse("Dense 1 input_dim=1 activation=linear use_bias=false\n")?
    ///     .compile(&Default::default())?;
    /// let x = ArrayD::<f32>::zeros(IxDyn(&[5, 1]));
    /// let (loss, _) = net.evaluate(x.view(), x.view(), 2)?; // predicts 0 for 0
    /// assert_eq!(loss, 0.0);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn evaluate(
        &mut self,
        x: ArrayViewD<'_, f32>,
        y: ArrayViewD<'_, f32>,
        batch_size: usize,
    ) -> Result<(f64, Option<f64>)> {
        if batch_size == 0 {
            return Err(Error::Usage("batch size must be at least 1".into()));
        }
        self.trainer
            .evaluate(&x.mapv(f64::from), &y.mapv(f64::from), batch_size)
    }

    /// Zeroes the stateful layers' states (Keras's `reset_states`).
    ///
    /// ```
    /// let mut net = lstmc::Model::parse("LSTM 2 input_dim=1 input_length=2 batch_size=1 stateful\n")?
    ///     .compile(&Default::default())?;
    /// net.predict(ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[1, 2, 1])).view())?;
    /// assert_eq!(net.states().len(), 2);
    /// net.reset_states();
    /// assert!(net.states().is_empty());
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn reset_states(&mut self) {
        self.trainer.reset_states();
    }

    /// The carried states of the stateful layers: `(layer, "h" or "c", [batch, units])`.
    ///
    /// ```
    /// let mut net = lstmc::Model::parse("SimpleRNN 3 input_dim=1 input_length=2 batch_size=2 stateful\n")?
    ///     .compile(&Default::default())?;
    /// net.predict(ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[2, 2, 1])).view())?;
    /// let (layer, slot, h) = &net.states()[0];
    /// assert_eq!((*layer, *slot, h.shape()), (0, "h", &[2, 3][..]));
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn states(&self) -> Vec<(usize, &'static str, ArrayD<f32>)> {
        self.trainer.states()
    }

    /// Sets a stateful layer's state (`"h"`, or `"c"` of an LSTM), shaped `[batch, units]`.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// let mut net = lstmc::Model::parse("SimpleRNN 2 input_dim=1 input_length=1 batch_size=1 stateful activation=linear use_bias=false\n")?
    ///     .compile(&Default::default())?;
    /// let zero_x = ArrayD::<f32>::zeros(IxDyn(&[1, 1, 1]));
    /// net.set_state(0, "h", &ArrayD::zeros(IxDyn(&[1, 2])))?;
    /// assert_eq!(net.predict(zero_x.view())?.sum(), 0.0); // h stays at zero
    /// assert!(net.set_state(0, "c", &ArrayD::zeros(IxDyn(&[1, 2]))).is_err()); // no c in a SimpleRNN
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn set_state(&mut self, layer: usize, slot: &str, value: &ArrayD<f32>) -> Result<()> {
        self.trainer.set_state(layer, slot, value)
    }

    /// The weights, by Keras's names (`layers.0.kernel`, …).
    ///
    /// ```
    /// let net = lstmc::Model::parse("LSTM 4 input_dim=3\n")?.compile(&Default::default())?;
    /// let w = net.weights();
    /// assert_eq!(w.get(0, "recurrent_kernel").unwrap().shape(), &[4, 16]);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn weights(&self) -> Weights {
        self.trainer.weights()
    }

    /// Replaces the weights; each must be present with its shape.
    ///
    /// ```
    /// let mut net = lstmc::Model::parse("Dense 1 input_dim=1\n")?.compile(&Default::default())?;
    /// let mut w = net.weights();
    /// w.tensors[0].1.fill(3.0);
    /// net.set_weights(&w)?;
    /// assert_eq!(net.weights().tensors[0].1[[0, 0]], 3.0);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn set_weights(&mut self, weights: &Weights) -> Result<()> {
        self.trainer.set_weights(weights)?;
        self.stale = true;
        Ok(())
    }

    /// Writes the weights as safetensors, atomically: a crash leaves the previous file.
    ///
    /// ```
    /// let net = lstmc::Model::parse("Dense 2 input_dim=2\n")?.compile(&Default::default())?;
    /// let dir = tempfile::tempdir().unwrap();
    /// net.save_weights(dir.path().join("w.safetensors"))?;
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn save_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        self.weights().save(path.as_ref())
    }

    /// Reads weights written by [`Network::save_weights`] or `lstmc run --save-weights`
    /// (or converted from Keras); names and shapes are checked against the model.
    ///
    /// ```
    /// let opts = lstmc::CompileOptions::default();
    /// let a = lstmc::Model::parse("GRU 2 input_dim=2\n")?.compile(&opts)?;
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("w.safetensors");
    /// a.save_weights(&path)?;
    /// let mut b = lstmc::Model::parse("GRU 2 input_dim=2\n")?
    ///     .compile(&lstmc::CompileOptions { seed: 1, ..opts })?;
    /// b.load_weights(&path)?;
    /// assert_eq!(a.weights(), b.weights());
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let w = Weights::load(self.trainer.spec(), path.as_ref())?;
        self.set_weights(&w)
    }

    /// A handle for predicting from many threads at once with the current weights
    /// (later training does not change it): see [`Predictor`].
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// let mut net = lstmc::Model::parse("LSTM 4 input_dim=1 input_length=3\n")?.compile(&Default::default())?;
    /// let p = net.predictor();
    /// let x = ArrayD::<f32>::ones(IxDyn(&[1, 3, 1]));
    /// let handles: Vec<_> = (0..4)
    ///     .map(|_| { let (p, x) = (p.clone(), x.clone()); std::thread::spawn(move || p.predict(&x)) })
    ///     .collect();
    /// for h in handles {
    ///     assert_eq!(h.join().unwrap()?, net.predict(x.view())?);
    /// }
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn predictor(&mut self) -> Predictor {
        if self.stale {
            self.runtime.set_weights(&self.trainer.weights());
            self.stale = false;
        }
        self.runtime.predictor()
    }
}
