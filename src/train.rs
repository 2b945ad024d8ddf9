//! Training: Keras's `fit` on native code.
//!
//! A step is one call of a generated function ([`crate::autodiff::train_step`]):
//! the forward pass saving what the backward pass reads, the loss and its
//! gradient, backpropagation through time, and the optimizer's update of every
//! weight and slot, in place. Stateful layers start each batch from the
//! previous batch's final states; their gradients stop at the batch boundary,
//! as in Keras.

use crate::autodiff::train_step;
use crate::error::{Error, Result};
use crate::ir::{lower, InputRole, OutputRole};
use crate::jit::{self, Buf, Compiled};
use crate::loss::{dense_targets, loss};
use crate::model::{Loss, Metric, ModelSpec, Optimizer, ResetStates};
use crate::reference::batch_shapes;
use crate::runtime::{gather, stage};
use crate::weights::Weights;
use ndarray::{ArrayD, Axis, IxDyn};
use std::sync::Arc;

mod fit;

/// Settings of a training run (the `compile` and `fit` statements, flags applied).
///
/// ```
/// let src = "Dense 1 input_dim=2\ncompile loss=mse\nfit epochs=7 batch_size=4 shuffle=false\n";
/// let mut net = lstmc::Model::parse(src)?
///     .compile(&Default::default())?;
/// let mut o: lstmc::FitOptions = net.fit_options();
/// assert_eq!((o.epochs, o.batch_size, o.shuffle), (7, 4, false));
/// o.validation_split = 0.25; // the last quarter of the samples, as Keras takes them
/// let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[8, 2]));
/// let logs = net.fit(x.view(), x.slice(ndarray::s![.., ..1]).into_dyn(), &o)?;
/// assert!(logs[0].validation.is_some());
/// # Ok::<(), lstmc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// The loss.
    pub loss: Loss,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// Epochs.
    pub epochs: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Shuffle the samples every epoch.
    pub shuffle: bool,
    /// Zero stateful layers' states after every epoch.
    pub reset_states: ResetStates,
    /// Fraction of samples (the last ones, as Keras takes them) held out for validation.
    pub validation_split: f64,
    /// Seed of the shuffling.
    pub seed: u64,
}

impl FitOptions {
    /// The model's `fit` line with `loss` and `optimizer`, Keras's defaults where the line is
    /// silent: one epoch, the model's batch size or 32, shuffled, states reset every epoch.
    ///
    /// ```
    /// use lstmc::model::{Loss, Optimizer};
    /// let model = lstmc::Model::parse("GRU 4 input_dim=1 input_length=3\n")?;
    /// let adam = Optimizer::keras_default("adam").unwrap();
    /// let o = lstmc::FitOptions::for_model(model.spec(), Loss::Mse, adam);
    /// assert_eq!((o.epochs, o.batch_size, o.shuffle), (1, 32, true));
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn for_model(spec: &ModelSpec, loss: Loss, optimizer: Optimizer) -> FitOptions {
        let fit = spec.fit.as_ref();
        FitOptions {
            loss,
            optimizer,
            epochs: fit.map_or(1, |f| f.epochs),
            batch_size: spec
                .input
                .batch
                .or(fit.and_then(|f| f.batch_size))
                .unwrap_or(32),
            shuffle: fit.and_then(|f| f.shuffle).unwrap_or(true),
            reset_states: fit.map_or(ResetStates::Epoch, |f| f.reset_states),
            validation_split: fit.map_or(0.0, |f| f.validation_split),
            seed: fit.and_then(|f| f.seed).unwrap_or(0),
        }
    }
}

/// One epoch's results.
///
/// ```
/// let mut net = lstmc::Model::parse("Dense 2 input_dim=1 activation=softmax\n\
///                                    compile loss=categorical_crossentropy metrics=accuracy\n")?
///     .compile(&Default::default())?;
/// let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[4, 1]));
/// let y = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[4, 2]), |i| (i[1] == 0) as u8 as f32);
/// let mut o = net.fit_options();
/// o.epochs = 3;
/// let logs: Vec<lstmc::EpochLog> = net.fit(x.view(), y.view(), &o)?;
/// assert_eq!(logs.iter().map(|l| l.epoch).collect::<Vec<_>>(), [1, 2, 3]);
/// assert!(logs.iter().all(|l| l.metric.is_some_and(|a| (0.0..=1.0).contains(&a))));
/// assert!(logs.iter().all(|l| l.validation.is_none()));
/// # Ok::<(), lstmc::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct EpochLog {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub loss: f64,
    /// The `compile` line's metric (`metrics=`) over the epoch's steps, weighted by
    /// their samples, when it names one: as Keras's logs, only the loss otherwise.
    pub metric: Option<f64>,
    /// Validation loss and metric, with a validation split.
    pub validation: Option<(f64, Option<f64>)>,
}

/// The random stream of the dropout masks (see [`crate::init::stream`]): apart from the
/// weights' (weight indices below 3) and the shuffling's (7, 7).
const DROPOUT_STREAM: (usize, usize) = (7, 8);

/// The functions compiled for one batch shape, with where each input comes from.
struct Functions {
    forward: Arc<Compiled>,
    forward_inputs: Arc<[Source]>,
    step: Arc<Compiled>,
    step_inputs: Arc<[Source]>,
    /// Whether the step takes dropout masks (drawn before each call).
    step_masks: bool,
}

/// Where a function input comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    X,
    Target,
    Hyper,
    /// `weights[i]`
    Weight(usize),
    /// `slots[i][j]`
    Slot(usize, usize),
    /// A state: carried, or zeros.
    State,
    /// `masks[i]`: a dropout mask, drawn for each step.
    Dropout(usize),
}

/// A model being trained, on native code: one call per step runs the forward pass,
/// the loss, the backward pass and the optimizer's update of every weight
/// ([`crate::autodiff::train_step`]). Weights and optimizer slots are float32, as
/// Keras keeps them, laid out for the generated code, which updates them in place.
pub struct Trainer {
    spec: ModelSpec,
    /// `(layer, name, shape)` of each weight, in the order of the weights given.
    names: Vec<(usize, &'static str, Vec<usize>)>,
    /// Staged weights (see [`stage`]).
    weights: Vec<Buf>,
    /// Staged optimizer slots, two per weight.
    slots: Vec<[Buf; 2]>,
    optimizer: Optimizer,
    /// Steps taken.
    iterations: u64,
    loss: Loss,
    /// The `compile` line's metric.
    metric: Option<Metric>,
    options: jit::Options,
    /// By batch shape, looked up at every step: a few entries, searched in order (a
    /// hashed map's SipHash took 3% of W1's training step).
    funcs: Vec<(lower::Shapes, Functions)>,
    /// Stateful layers' states by (layer, slot), staged, for the batch size in use.
    states: Vec<((usize, &'static str), Buf)>,
    arena: Buf,
    x: Buf,
    target: Buf,
    hyper: Buf,
    /// [`Trainer::train_on_batch`]'s rows of targets and predictions, kept between steps.
    scratch: Vec<f32>,
    /// Buffers for the zero states of layers that carry none, kept between calls (zeroed
    /// again at each: a call may write its inputs).
    spare: Vec<Buf>,
    /// The dropout masks of the step being taken, in the order of its inputs.
    masks: Vec<Buf>,
    /// Where the dropout masks are drawn from: reseeded by [`Trainer::fit`] from its seed.
    dropout_rng: rand_pcg::Pcg64Mcg,
}

/// Copies an output out of the arena into a staged buffer (rows `padded_stride` apart).
fn restage(arena: &[f32], loc: &jit::plan::Loc, dst: &mut Buf) {
    let stride = jit::plan::padded_stride(loc.rows, loc.cols);
    dst.resize(jit::plan::padded_len(loc.rows, loc.cols), 0.0);
    for r in 0..loc.rows {
        let s = loc.offset as usize + r * loc.row_stride;
        dst[r * stride..r * stride + loc.cols].copy_from_slice(&arena[s..s + loc.cols]);
    }
}

/// Un-stages `rows × cols` values.
fn unstage(src: &[f32], shape: &[usize]) -> Vec<f32> {
    let cols = *shape.last().unwrap_or(&1);
    let rows = shape.iter().product::<usize>() / cols.max(1);
    let stride = jit::plan::padded_stride(rows, cols);
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        out.extend_from_slice(&src[r * stride..r * stride + cols]);
    }
    out
}

impl Trainer {
    /// A trainer for `spec` from `weights`.
    pub fn new(
        spec: ModelSpec,
        weights: Weights,
        loss_kind: Loss,
        optimizer: Optimizer,
        options: jit::Options,
    ) -> Trainer {
        let mut names = Vec::new();
        let mut staged = Vec::new();
        let mut slots = Vec::new();
        for (i, layer) in spec.layers.iter().enumerate() {
            for w in layer.weights() {
                if let Some(t) = weights.get(i, w.name) {
                    let values: Vec<f32> = t.iter().map(|&v| v as f32).collect();
                    let mut s = Buf::new();
                    stage(&values, *t.shape().last().unwrap_or(&1), &mut s);
                    slots.push([Buf::zeros(s.len()), Buf::zeros(s.len())]);
                    staged.push(s);
                    names.push((i, w.name, t.shape().to_vec()));
                }
            }
        }
        let metric = spec
            .compile
            .as_ref()
            .and_then(|c| c.metrics.first().copied());
        Trainer {
            spec,
            names,
            weights: staged,
            slots,
            optimizer,
            iterations: 0,
            loss: loss_kind,
            metric,
            options,
            funcs: Vec::new(),
            states: Vec::new(),
            arena: Buf::new(),
            x: Buf::new(),
            target: Buf::new(),
            hyper: Buf::new(),
            scratch: Vec::new(),
            spare: Vec::new(),
            masks: Vec::new(),
            dropout_rng: crate::init::stream(0, DROPOUT_STREAM.0, DROPOUT_STREAM.1),
        }
    }

    /// The current weights (float32 values, as float64 tensors).
    pub fn weights(&self) -> Weights {
        let mut out = Weights::default();
        for ((layer, name, shape), s) in self.names.iter().zip(&self.weights) {
            let values: Vec<f64> = unstage(s, shape).into_iter().map(f64::from).collect();
            out.tensors.push((
                format!("layers.{layer}.{name}"),
                ArrayD::from_shape_vec(IxDyn(shape), values).expect("staged sizes agree"),
            ));
        }
        out
    }

    /// The optimizer's two slots per weight, by the weights' names (`layers.0.kernel`),
    /// as float32 values of the weight's shape: Adam's first and second moments,
    /// RMSprop's average of squares and momentum, SGD's momentum (first). Slots a rule
    /// does not use stay zero.
    pub fn optimizer_slots(&self) -> Vec<(String, [ArrayD<f32>; 2])> {
        self.names
            .iter()
            .zip(&self.slots)
            .map(|((layer, name, shape), pair)| {
                let slot = |s: &Buf| {
                    ArrayD::from_shape_vec(IxDyn(shape), unstage(s, shape))
                        .expect("staged sizes agree")
                };
                (
                    format!("layers.{layer}.{name}"),
                    [slot(&pair[0]), slot(&pair[1])],
                )
            })
            .collect()
    }

    /// The training steps compiled so far (forward, loss, backward and update), one per
    /// batch shape trained on.
    pub fn step_functions(&self) -> impl Iterator<Item = &Compiled> {
        self.funcs.iter().map(|(_, f)| &*f.step)
    }

    /// Optimizer steps taken so far.
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Zeroes the stateful layers' states.
    pub fn reset_states(&mut self) {
        self.states.clear();
    }

    /// The carried states of the stateful layers: `(layer, "h" or "c", [batch, units])`,
    /// none before the first batch or after [`Trainer::reset_states`].
    pub fn states(&self) -> Vec<(usize, &'static str, ArrayD<f32>)> {
        let mut v: Vec<_> = self
            .states
            .iter()
            .map(|&((layer, slot), ref buf)| {
                let units = self.spec.layers[layer].units;
                // Staged rows: one row (its own stride), or `padded_stride(2+)` apart.
                let rows = if buf.len() == jit::plan::padded_len(1, units) {
                    1
                } else {
                    (buf.len() - jit::plan::SLACK) / jit::plan::padded_stride(2, units)
                };
                let shape = [rows, units];
                let a = ArrayD::from_shape_vec(IxDyn(&shape), unstage(buf, &shape))
                    .expect("staged sizes agree");
                (layer, slot, a)
            })
            .collect();
        v.sort_by_key(|&(l, s, _)| (l, s != "h"));
        v
    }

    /// Sets the carried state `slot` (`"h"`, or `"c"` for an LSTM) of stateful layer `layer`
    /// to `value`, shaped `[batch, units]`; the next batch must have that batch size.
    pub fn set_state(&mut self, layer: usize, slot: &str, value: &ArrayD<f32>) -> Result<()> {
        let l = self.spec.layers.get(layer).ok_or_else(|| {
            Error::Usage(format!(
                "model `{}` has {} layers; there is no layer {layer}",
                self.spec.name,
                self.spec.layers.len()
            ))
        })?;
        if !l.stateful {
            return Err(Error::Usage(format!(
                "layer {layer} ({}) is not stateful: it starts every batch from zeros",
                l.kind.name()
            )));
        }
        let slots: &[&'static str] = if l.kind == crate::model::LayerKind::Lstm {
            &["h", "c"]
        } else {
            &["h"]
        };
        let slot = *slots.iter().find(|s| **s == slot).ok_or_else(|| {
            Error::Usage(format!(
                "layer {layer} ({}) has states {}; not `{slot}`",
                l.kind.name(),
                slots.join(" and ")
            ))
        })?;
        if value.ndim() != 2 || value.shape()[1] != l.units {
            return Err(Error::Usage(format!(
                "state {slot} of layer {layer} is [batch, {}]; got {:?}",
                l.units,
                value.shape()
            )));
        }
        if value.iter().any(|v| !v.is_finite()) {
            return Err(Error::Data(format!(
                "state {slot} of layer {layer} has NaN or infinite values"
            )));
        }
        let values: Vec<f32> = value.iter().copied().collect();
        let mut buf = Buf::new();
        stage(&values, l.units, &mut buf);
        self.states.retain(|(k, _)| *k != (layer, slot));
        self.states.push(((layer, slot), buf));
        Ok(())
    }

    /// Replaces the weights (the optimizer's slots and step count are kept, as Keras's
    /// `set_weights` keeps them). Every weight of the model must be given, with its shape.
    pub fn set_weights(&mut self, weights: &Weights) -> Result<()> {
        let mut staged = Vec::with_capacity(self.names.len());
        for (layer, name, shape) in &self.names {
            let t = weights.get(*layer, name).ok_or_else(|| {
                Error::Weights(format!("weight layers.{layer}.{name} is missing"))
            })?;
            if t.shape() != shape.as_slice() {
                return Err(Error::Weights(format!(
                    "weight layers.{layer}.{name} is shaped {:?}; the model needs {:?}",
                    t.shape(),
                    shape
                )));
            }
            let values: Vec<f32> = t.iter().map(|&v| v as f32).collect();
            let mut s = Buf::new();
            stage(&values, *shape.last().unwrap_or(&1), &mut s);
            staged.push(s);
        }
        self.weights = staged;
        Ok(())
    }

    /// The model.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The loss it trains with.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// The optimizer it trains with.
    pub fn optimizer(&self) -> Optimizer {
        self.optimizer
    }

    /// The metric it reports besides the loss (the `compile` line's `metrics=`).
    pub fn metric(&self) -> Option<Metric> {
        self.metric
    }

    /// Reports `metric` besides the loss from now on (none with `None`).
    pub fn set_metric(&mut self, metric: Option<Metric>) {
        self.metric = metric;
    }

    fn sources(&self, c: &Compiled) -> Result<Vec<Source>> {
        let mut masks = 0..;
        c.func
            .input_roles
            .iter()
            .map(|role| {
                let weight = |layer: usize, name: &str| {
                    self.names
                        .iter()
                        .position(|(l, n, _)| *l == layer && *n == name)
                        .ok_or_else(|| Error::Internal(format!("no weight layers.{layer}.{name}")))
                };
                Ok(match role {
                    InputRole::X => Source::X,
                    InputRole::Target => Source::Target,
                    InputRole::Hyper => Source::Hyper,
                    InputRole::Weight { layer, name } => Source::Weight(weight(*layer, name)?),
                    InputRole::Slot { layer, name, index } => {
                        Source::Slot(weight(*layer, name)?, *index)
                    }
                    InputRole::State { .. } => Source::State,
                    InputRole::Dropout { .. } => {
                        Source::Dropout(masks.next().expect("an unbounded range"))
                    }
                    InputRole::DY => {
                        return Err(Error::Internal("a training step takes no dy".into()))
                    }
                })
            })
            .collect()
    }

    fn functions(&mut self, shapes: lower::Shapes) -> Result<&Functions> {
        let at = match self.funcs.iter().position(|(s, _)| *s == shapes) {
            Some(at) => at,
            None => {
                let f = lower::lower(&self.spec, shapes)?;
                let training = lower::lower_training(&self.spec, shapes)?;
                let step = train_step(&training, self.loss, self.optimizer)?;
                let forward = Arc::new(jit::compile(f, &self.options)?);
                let step = Arc::new(jit::compile(step, &self.options)?);
                let forward_inputs = self.sources(&forward)?.into();
                let step_inputs: Arc<[Source]> = self.sources(&step)?.into();
                let step_masks = step_inputs.iter().any(|s| matches!(s, Source::Dropout(_)));
                self.funcs.push((
                    shapes,
                    Functions {
                        forward,
                        forward_inputs,
                        step,
                        step_inputs,
                        step_masks,
                    },
                ));
                self.funcs.len() - 1
            }
        };
        Ok(&self.funcs[at].1)
    }

    /// Runs `c` with its inputs from `sources` (x staged in `self.x`, the target in
    /// `self.target`), then keeps the stateful layers' final states. Outputs stay in the arena.
    fn run(&mut self, c: &Compiled, sources: &[Source]) -> Result<()> {
        if self.arena.len() < c.plan.arena_len {
            self.arena.resize(c.plan.arena_len, 0.0);
        }
        // States: one staged buffer per state input, zeros when none is carried. A carried
        // state is moved in, not copied, and put back after the call (the state outputs
        // are then copied over it).
        let mut state_bufs: Vec<Buf> = Vec::new();
        let mut carried_at: Vec<Option<usize>> = Vec::new();
        for (role, p) in c.func.inputs() {
            if let InputRole::State { layer, slot } = role {
                let shape = c.func.shape(p);
                let len = jit::plan::padded_len(
                    shape[..shape.len() - 1].iter().product(),
                    *shape.last().unwrap_or(&1),
                );
                let carried = self.states.iter().position(|(k, _)| *k == (layer, slot));
                match carried.map(|i| (i, self.states[i].1.len())) {
                    Some((i, n)) if n == len => {
                        state_bufs.push(std::mem::take(&mut self.states[i].1));
                        carried_at.push(Some(i));
                    }
                    Some(_) => {
                        self.put_back(state_bufs, &carried_at);
                        return Err(Error::Usage(format!(
                            "model `{}` is stateful and carries states for another batch size than this \
                             batch of {}; call reset_states() first, which starts from zero states",
                            self.spec.name, shape[0]
                        )));
                    }
                    None => {
                        let mut zeros = self.spare.pop().unwrap_or_default();
                        zeros.resize(len, 0.0);
                        zeros.fill(0.0);
                        state_bufs.push(zeros);
                        carried_at.push(None);
                    }
                }
            }
        }
        let called = {
            let Trainer {
                weights,
                slots,
                x,
                target,
                hyper,
                arena,
                masks,
                ..
            } = self;
            let mut masks: Vec<Option<&mut Buf>> = masks.iter_mut().map(Some).collect();
            let mut ws: Vec<Option<&mut Buf>> = weights.iter_mut().map(Some).collect();
            let mut ss: Vec<[Option<&mut Buf>; 2]> =
                slots.iter_mut().map(|[a, b]| [Some(a), Some(b)]).collect();
            let mut states = state_bufs.iter_mut();
            let (mut x, mut target, mut hyper) = (Some(x), Some(target), Some(hyper));
            let mut bufs: Vec<&mut [f32]> = Vec::with_capacity(sources.len());
            let taken = || Error::Internal("an input is given twice".into());
            for s in sources {
                bufs.push(match *s {
                    Source::X => x.take().ok_or_else(taken)?,
                    Source::Target => target.take().ok_or_else(taken)?,
                    Source::Hyper => hyper.take().ok_or_else(taken)?,
                    Source::Weight(i) => ws[i].take().ok_or_else(taken)?,
                    Source::Slot(i, j) => ss[i][j].take().ok_or_else(taken)?,
                    Source::State => states.next().ok_or_else(taken)?,
                    Source::Dropout(i) => {
                        masks.get_mut(i).and_then(Option::take).ok_or_else(taken)?
                    }
                });
            }
            c.code.call_mut(&mut bufs, arena)
        };
        self.put_back(state_bufs, &carried_at);
        called?;
        for ((role, _), loc) in c.func.outputs.iter().zip(&c.plan.outputs) {
            if let OutputRole::State { layer, slot } = role {
                if self.spec.layers[*layer].stateful {
                    let key = (*layer, *slot);
                    match self.states.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, buf)) => restage(&self.arena, loc, buf),
                        None => {
                            let mut buf = Buf::new();
                            restage(&self.arena, loc, &mut buf);
                            self.states.push((key, buf));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Draws the dropout masks of a step of `c`, one for each of its
    /// [`InputRole::Dropout`] inputs, as Keras's `backend.random.dropout` of ones: each
    /// element kept with probability `1 - rate`, as `1 / (1 - rate)` in float32, else 0.
    fn draw_masks(&mut self, c: &Compiled) {
        let mut k = 0;
        let mut values = Vec::new();
        for (role, p) in c.func.inputs() {
            let InputRole::Dropout {
                layer, recurrent, ..
            } = role
            else {
                continue;
            };
            let l = &self.spec.layers[layer];
            let rate = if recurrent {
                l.recurrent_dropout
            } else {
                l.dropout
            };
            let keep = 1.0 - rate;
            let scale = 1.0f32 / keep as f32;
            let shape = c.func.shape(p);
            values.clear();
            values.extend((0..shape.iter().product::<usize>()).map(|_| {
                if rand::Rng::random::<f64>(&mut self.dropout_rng) < keep {
                    scale
                } else {
                    0.0
                }
            }));
            if self.masks.len() <= k {
                self.masks.push(Buf::new());
            }
            stage(&values, *shape.last().unwrap_or(&1), &mut self.masks[k]);
            k += 1;
        }
    }

    /// Returns the carried states that [`Trainer::run`] moved into a call's inputs to
    /// their places (`carried_at[k]`: where `bufs[k]` came from, if it was carried), and
    /// the zero states to [`Trainer::spare`].
    fn put_back(&mut self, bufs: Vec<Buf>, carried_at: &[Option<usize>]) {
        for (buf, at) in bufs.into_iter().zip(carried_at) {
            match *at {
                Some(i) => self.states[i].1 = buf,
                None => self.spare.push(buf),
            }
        }
    }

    /// Where the output `role` of `c` lies (in the arena, after a run).
    fn output_loc<'c>(&self, c: &'c Compiled, role: &OutputRole) -> Result<&'c jit::plan::Loc> {
        c.func
            .outputs
            .iter()
            .position(|(r, _)| r == role)
            .map(|k| &c.plan.outputs[k])
            .ok_or_else(|| Error::Internal(format!("no output {role}")))
    }

    /// The output `role` of the last run of `c`, from the arena.
    fn output(&self, c: &Compiled, role: &OutputRole) -> Result<ArrayD<f32>> {
        let loc = self.output_loc(c, role)?;
        let v = c
            .func
            .outputs
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, v)| *v)
            .ok_or_else(|| Error::Internal(format!("no output {role}")))?;
        let mut buf = vec![0.0f32; loc.rows * loc.cols];
        gather(&self.arena, loc, &mut buf);
        ArrayD::from_shape_vec(IxDyn(c.func.shape(v)), buf)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Predicts one batch, carrying stateful layers' states.
    pub fn predict_batch(&mut self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let shapes = batch_shapes(&self.spec, x.shape())?;
        let (f, sources) = {
            let fs = self.functions(shapes)?;
            (fs.forward.clone(), fs.forward_inputs.clone())
        };
        let xs: Vec<f32> = x.iter().copied().collect();
        stage(&xs, *x.shape().last().unwrap_or(&1), &mut self.x);
        self.run(&f, &sources)?;
        self.output(&f, &OutputRole::Y)
    }

    /// One optimizer step on a batch, in one native call; returns the loss before the
    /// update and, when the model has a metric, its value for the batch's prediction.
    pub fn train_on_batch(
        &mut self,
        x: &ArrayD<f32>,
        target: &ArrayD<f64>,
    ) -> Result<(f64, Option<f64>)> {
        let shapes = batch_shapes(&self.spec, x.shape())?;
        let (f, sources, masks) = {
            let fs = self.functions(shapes)?;
            (fs.step.clone(), fs.step_inputs.clone(), fs.step_masks)
        };
        let y_shape = output_shape(&f, &OutputRole::Y)?;
        let dense = dense_targets(self.loss, y_shape, target)?;
        match x.as_slice() {
            Some(xs) => stage(xs, *x.shape().last().unwrap_or(&1), &mut self.x),
            None => {
                let xs: Vec<f32> = x.iter().copied().collect();
                stage(&xs, *x.shape().last().unwrap_or(&1), &mut self.x)
            }
        }
        // Scratch rows kept from step to step: the tutorial's steps are microseconds long.
        let mut ts = std::mem::take(&mut self.scratch);
        ts.clear();
        ts.extend(dense.iter().map(|&v| v as f32));
        stage(&ts, *y_shape.last().unwrap_or(&1), &mut self.target);
        let rate = self.optimizer.step_rate(self.iterations + 1) as f32;
        stage(&[rate], 1, &mut self.hyper);
        if masks {
            self.draw_masks(&f);
        }
        self.run(&f, &sources)?;
        self.iterations += 1;
        let loss_at = self.output_loc(&f, &OutputRole::Loss)?;
        let value = match loss_at.base {
            jit::plan::Base::Arena => self.arena.get(loss_at.offset as usize).copied(),
            jit::plan::Base::Input(_) => None,
        }
        .ok_or_else(|| Error::Internal("the loss is not in the arena".into()))?;
        // The prediction into `ts`'s rows, for the metric, without an array of its own.
        let score = match self.metric {
            Some(metric) => {
                let loc = self.output_loc(&f, &OutputRole::Y)?;
                ts.resize(loc.rows * loc.cols, 0.0);
                gather(&self.arena, loc, &mut ts);
                let c = *y_shape.last().unwrap_or(&1);
                Some(match target.as_slice() {
                    Some(t) => metric_rows(metric, self.loss, &ts, t, c),
                    None => {
                        let t: Vec<f64> = target.iter().copied().collect();
                        metric_rows(metric, self.loss, &ts, &t, c)
                    }
                })
            }
            None => None,
        };
        self.scratch = ts;
        Ok((f64::from(value), score))
    }

    /// Loss and, when the model has one, metric over a data set, in batches, states
    /// carried (no updates).
    pub fn evaluate(
        &mut self,
        x: &ArrayD<f64>,
        y: &ArrayD<f64>,
        batch_size: usize,
    ) -> Result<(f64, Option<f64>)> {
        let n = x.shape()[0];
        let (mut total, mut acc) = (0.0, 0.0);
        let mut seen = 0;
        for s in (0..n).step_by(batch_size.max(1)) {
            let e = (s + batch_size).min(n);
            let xb = x.slice_axis(Axis(0), (s..e).into()).mapv(|v| v as f32);
            let tb = y.slice_axis(Axis(0), (s..e).into()).to_owned();
            let yb = self.predict_batch(&xb)?.mapv(|v| v as f64);
            let (l, _) = loss(self.loss, &yb, &tb)?;
            total += l * (e - s) as f64;
            if let Some(m) = self.metric {
                acc += metric(m, self.loss, &yb, &tb) * (e - s) as f64;
            }
            seen += e - s;
        }
        Ok((total / seen as f64, self.metric.map(|_| acc / seen as f64)))
    }
}

/// Keras 3's value of `metric` for predictions `y` against targets `t` (class indices,
/// for the sparse loss). `accuracy` is chosen by shapes, as Keras's `compile` chooses it:
/// binary accuracy (`y > 0.5` equals the target) for one output column, sparse
/// categorical accuracy for class-index targets, otherwise categorical accuracy (the
/// arg-maxes match), whatever the loss. `mae` and `mse` are means over every element.
pub fn metric(metric: Metric, kind: Loss, y: &ArrayD<f64>, t: &ArrayD<f64>) -> f64 {
    let c = *y.shape().last().unwrap_or(&1);
    let ys: Vec<f64> = y.iter().copied().collect();
    let ts: Vec<f64> = t.iter().copied().collect();
    metric_rows(metric, kind, &ys, &ts, c)
}

/// [`metric`] of predictions `ys` (rows of `c`, `f32` or `f64`) against targets `ts`
/// in standard layout (class indices, one per row, for the sparse loss).
fn metric_rows<Y: Copy + Into<f64>>(
    metric: Metric,
    kind: Loss,
    ys: &[Y],
    ts: &[f64],
    c: usize,
) -> f64 {
    let c = c.max(1);
    let rows = ys.len() / c;
    let sparse = kind == Loss::SparseCategoricalCrossentropy;
    // The target of lane `j` of row `r`: a class index is compared with every lane, as
    // Keras broadcasts `(batch, 1)` against `(batch, classes)`.
    let target = |r: usize, j: usize| if sparse { ts[r] } else { ts[r * c + j] };
    let mut sum = 0.0;
    for r in 0..rows {
        let yr = &ys[r * c..(r + 1) * c];
        sum += match metric {
            Metric::Accuracy if c == 1 => {
                let p = if yr[0].into() > 0.5 { 1.0 } else { 0.0 };
                f64::from(u8::from(target(r, 0) == p))
            }
            Metric::Accuracy if sparse => f64::from(u8::from(argmax(yr) as f64 == ts[r])),
            Metric::Accuracy => f64::from(u8::from(argmax(yr) == argmax(&ts[r * c..(r + 1) * c]))),
            Metric::Mae => {
                (0..c)
                    .map(|j| (yr[j].into() - target(r, j)).abs())
                    .sum::<f64>()
                    / c as f64
            }
            Metric::Mse => {
                (0..c)
                    .map(|j| (yr[j].into() - target(r, j)).powi(2))
                    .sum::<f64>()
                    / c as f64
            }
        };
    }
    sum / rows.max(1) as f64
}

/// The first index of the largest element (NaN never wins).
fn argmax<T: Copy + Into<f64>>(v: &[T]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x.into() > v[b].into() { i } else { b })
}

/// The shape of a function output.
fn output_shape<'c>(c: &'c Compiled, role: &OutputRole) -> Result<&'c [usize]> {
    c.func
        .outputs
        .iter()
        .find(|(r, _)| r == role)
        .map(|(_, v)| c.func.shape(*v))
        .ok_or_else(|| Error::Internal(format!("no output {role}")))
}
