//! Training: Keras's `fit` on native code.
//!
//! A step runs the compiled forward function for the prediction, computes the
//! loss and its gradient on the host ([`crate::loss`]), runs the compiled
//! gradient function ([`crate::autodiff`]) for the weights' gradients and the
//! final states, and applies the optimizer ([`crate::optim`]). Stateful layers
//! start each batch from the previous batch's final states; their gradients
//! stop at the batch boundary, as in Keras.

use crate::autodiff::gradient;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::ir::{lower, GradRole, InputRole, OutputRole};
use crate::jit::{self, Compiled};
use crate::loss::loss;
use crate::model::{Loss, ModelSpec, Optimizer, ResetStates};
use crate::optim::OptimizerState;
use crate::reference::batch_shapes;
use crate::runtime::{gather, stage};
use crate::weights::Weights;
use ndarray::{ArrayD, Axis, IxDyn};
use std::collections::HashMap;
use std::sync::Arc;

/// Settings of a training run (the `compile` and `fit` statements, flags applied).
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

/// One epoch's results.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochLog {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub loss: f64,
    /// Training accuracy.
    pub accuracy: f64,
    /// Validation loss and accuracy, with a validation split.
    pub validation: Option<(f64, f64)>,
}

struct Functions {
    forward: Arc<Compiled>,
    gradient: Arc<Compiled>,
}

/// A model being trained: f64 master weights, the optimizer, the states.
pub struct Trainer {
    spec: ModelSpec,
    /// The weights.
    pub weights: Weights,
    optimizer: OptimizerState,
    loss: Loss,
    options: jit::Options,
    funcs: HashMap<lower::Shapes, Functions>,
    /// Stateful layers' states, by (layer, slot), f32 rows.
    states: HashMap<(usize, &'static str), ArrayD<f32>>,
    arena: Vec<f32>,
    /// The weights as the generated code reads them (f32, padded), redone after each update.
    staged: HashMap<(usize, &'static str), Vec<f32>>,
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
        let shapes: Vec<Vec<usize>> = weights
            .tensors
            .iter()
            .map(|(_, t)| t.shape().to_vec())
            .collect();
        let refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
        Trainer {
            optimizer: OptimizerState::new(optimizer, &refs),
            spec,
            weights,
            loss: loss_kind,
            options,
            funcs: HashMap::new(),
            states: HashMap::new(),
            arena: Vec::new(),
            staged: HashMap::new(),
        }
    }

    /// Lays the weights out for the generated code (after every update).
    fn stage_weights(&mut self) {
        self.staged.clear();
        for (i, layer) in self.spec.layers.iter().enumerate() {
            for w in layer.weights() {
                if let Some(t) = self.weights.get(i, w.name) {
                    let values: Vec<f32> = t.iter().map(|&v| v as f32).collect();
                    let mut s = Vec::new();
                    stage(&values, *t.shape().last().unwrap_or(&1), &mut s);
                    self.staged.insert((i, w.name), s);
                }
            }
        }
    }

    /// Zeroes the stateful layers' states.
    pub fn reset_states(&mut self) {
        self.states.clear();
    }

    fn functions(&mut self, shapes: lower::Shapes) -> Result<&Functions> {
        if !self.funcs.contains_key(&shapes) {
            let f = lower::lower(&self.spec, shapes)?;
            let g = gradient(&f)?;
            let forward = Arc::new(jit::compile(f, &self.options)?);
            let gradient = Arc::new(jit::compile(g, &self.options)?);
            self.funcs.insert(shapes, Functions { forward, gradient });
        }
        Ok(&self.funcs[&shapes])
    }

    /// Runs a compiled function on x (and dy); returns its outputs by role.
    fn call(
        &mut self,
        c: &Compiled,
        x: &ArrayD<f32>,
        dy: Option<&ArrayD<f32>>,
    ) -> Result<Vec<(OutputRole, ArrayD<f32>)>> {
        if self.staged.is_empty() {
            self.stage_weights();
        }
        let mut staged: Vec<Vec<f32>> = Vec::with_capacity(c.func.input_roles.len());
        for (role, &p) in c
            .func
            .input_roles
            .iter()
            .zip(&c.func.block(c.func.entry).params)
        {
            let shape = c.func.shape(p).to_vec();
            let values: Vec<f32> = match role {
                InputRole::X => x.iter().copied().collect(),
                // Staged already: an empty placeholder, replaced below.
                InputRole::Weight { .. } => Vec::new(),
                InputRole::State { layer, slot } => match self.states.get(&(*layer, *slot)) {
                    Some(s) => s.iter().copied().collect(),
                    None => vec![0.0; shape.iter().product()],
                },
                InputRole::DY => dy
                    .ok_or_else(|| Error::Internal("dy missing".into()))?
                    .iter()
                    .copied()
                    .collect(),
            };
            let mut s = Vec::new();
            if !matches!(role, InputRole::Weight { .. }) {
                stage(&values, *shape.last().unwrap_or(&1), &mut s);
            }
            staged.push(s);
        }
        if self.arena.len() < c.plan.arena_len {
            self.arena.resize(c.plan.arena_len, 0.0);
        }
        let mut refs: Vec<&[f32]> = Vec::with_capacity(staged.len());
        for (role, s) in c.func.input_roles.iter().zip(&staged) {
            refs.push(match role {
                InputRole::Weight { layer, name } => self
                    .staged
                    .get(&(*layer, *name))
                    .ok_or_else(|| Error::Internal(format!("no weight layers.{layer}.{name}")))?,
                _ => s,
            });
        }
        c.code.call(&refs, &mut self.arena)?;
        let mut out = Vec::new();
        for ((role, v), loc) in c.func.outputs.iter().zip(&c.plan.outputs) {
            let mut buf = vec![0.0f32; loc.rows * loc.cols];
            gather(&self.arena, loc, &mut buf);
            out.push((
                role.clone(),
                ArrayD::from_shape_vec(IxDyn(c.func.shape(*v)), buf)
                    .map_err(|e| Error::Internal(e.to_string()))?,
            ));
        }
        Ok(out)
    }

    /// Predicts one batch, carrying stateful layers' states.
    pub fn predict_batch(&mut self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let shapes = batch_shapes(&self.spec, x.shape())?;
        let f = self.functions(shapes)?.forward.clone();
        let outs = self.call(&f, x, None)?;
        let mut y = None;
        for (role, a) in outs {
            match role {
                OutputRole::Y => y = Some(a),
                OutputRole::State { layer, slot } if self.spec.layers[layer].stateful => {
                    self.states.insert((layer, slot), a);
                }
                _ => {}
            }
        }
        y.ok_or_else(|| Error::Internal("no output".into()))
    }

    /// One optimizer step on a batch; returns the loss before the update and the accuracy.
    pub fn train_on_batch(&mut self, x: &ArrayD<f32>, target: &ArrayD<f64>) -> Result<(f64, f64)> {
        let shapes = batch_shapes(&self.spec, x.shape())?;
        let (f, g) = {
            let fs = self.functions(shapes)?;
            (fs.forward.clone(), fs.gradient.clone())
        };
        let outs = self.call(&f, x, None)?;
        let y = outs
            .iter()
            .find(|(r, _)| *r == OutputRole::Y)
            .map(|(_, a)| a.mapv(|v| v as f64))
            .ok_or_else(|| Error::Internal("no output".into()))?;
        let (value, dy) = loss(self.loss, &y, target)?;
        let acc = accuracy(self.loss, &y, target);
        let outs = self.call(&g, x, Some(&dy.mapv(|v| v as f32)))?;
        let mut grads: HashMap<String, ArrayD<f64>> = HashMap::new();
        for (role, a) in outs {
            match role {
                OutputRole::Grad(GradRole(InputRole::Weight { layer, name })) => {
                    grads.insert(format!("layers.{layer}.{name}"), a.mapv(|v| v as f64));
                }
                OutputRole::State { layer, slot } if self.spec.layers[layer].stateful => {
                    self.states.insert((layer, slot), a);
                }
                _ => {}
            }
        }
        let gs: Vec<ArrayD<f64>> = self
            .weights
            .tensors
            .iter()
            .map(|(n, _)| {
                grads
                    .remove(n)
                    .ok_or_else(|| Error::Internal(format!("no gradient for {n}")))
            })
            .collect::<Result<_>>()?;
        let grefs: Vec<&ArrayD<f64>> = gs.iter().collect();
        let mut wrefs: Vec<&mut ArrayD<f64>> =
            self.weights.tensors.iter_mut().map(|(_, t)| t).collect();
        self.optimizer.step(&mut wrefs, &grefs)?;
        self.stage_weights();
        Ok((value, acc))
    }

    /// Loss and accuracy over a data set, in batches, states carried (no updates).
    pub fn evaluate(
        &mut self,
        x: &ArrayD<f64>,
        y: &ArrayD<f64>,
        batch_size: usize,
    ) -> Result<(f64, f64)> {
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
            acc += accuracy(self.loss, &yb, &tb) * (e - s) as f64;
            seen += e - s;
        }
        Ok((total / seen as f64, acc / seen as f64))
    }

    /// Keras's `fit`: returns the log of every epoch. `on_epoch` sees each log as it
    /// is made. A non-finite loss stops training with an error naming the epoch and
    /// batch, and the weights of the last complete epoch are kept.
    pub fn fit(
        &mut self,
        data: &Dataset,
        o: &FitOptions,
        mut on_epoch: impl FnMut(&EpochLog),
    ) -> Result<Vec<EpochLog>> {
        let y = data
            .y
            .as_ref()
            .ok_or_else(|| Error::Data("training needs targets (y)".into()))?;
        let n = data.x.shape()[0];
        let n_val = ((n as f64) * o.validation_split).floor() as usize;
        let n_train = n - n_val;
        if n_train == 0 {
            return Err(Error::Data(format!(
                "validation_split={} leaves no training samples",
                o.validation_split
            )));
        }
        let stateful = self.spec.is_stateful();
        if stateful && !n_train.is_multiple_of(o.batch_size) {
            return Err(Error::Data(format!(
                "a stateful model trains on whole batches: {n_train} samples are not a multiple of batch_size={}",
                o.batch_size
            )));
        }
        let mut rng = crate::init::stream(o.seed, 7, 7);
        let mut logs = Vec::new();
        for epoch in 1..=o.epochs {
            let good = self.weights.clone();
            let good_opt = self.optimizer.clone();
            let mut order: Vec<usize> = (0..n_train).collect();
            if o.shuffle {
                for i in (1..order.len()).rev() {
                    let j = rand::Rng::random_range(&mut rng, 0..=i);
                    order.swap(i, j);
                }
            }
            let (mut total, mut acc) = (0.0, 0.0);
            for (b, chunk) in order.chunks(o.batch_size).enumerate() {
                let xb = data.x.select(Axis(0), chunk).mapv(|v| v as f32);
                let tb = y.select(Axis(0), chunk);
                let (l, a) = self.train_on_batch(&xb, &tb)?;
                // Diverged weights give a non-finite loss at the next step.
                if !l.is_finite() {
                    self.weights = good;
                    self.optimizer = good_opt;
                    self.stage_weights();
                    return Err(Error::Data(format!(
                        "training diverged: the loss is {l} at epoch {epoch}, batch {}; the weights of epoch {} are kept",
                        b + 1,
                        epoch - 1
                    )));
                }
                total += l * chunk.len() as f64;
                acc += a * chunk.len() as f64;
            }
            if stateful && o.reset_states == ResetStates::Epoch {
                self.reset_states();
            }
            let validation = if n_val > 0 {
                let xv = data.x.slice_axis(Axis(0), (n_train..n).into()).to_owned();
                let yv = y.slice_axis(Axis(0), (n_train..n).into()).to_owned();
                let r = self.evaluate(&xv, &yv, o.batch_size)?;
                if stateful {
                    self.reset_states();
                }
                Some(r)
            } else {
                None
            };
            let log = EpochLog {
                epoch,
                loss: total / n_train as f64,
                accuracy: acc / n_train as f64,
                validation,
            };
            on_epoch(&log);
            logs.push(log);
        }
        Ok(logs)
    }
}

/// Keras's `accuracy` for this loss: the arg-max matches for the cross-entropies,
/// predictions rounded at 0.5 otherwise.
pub fn accuracy(kind: Loss, y: &ArrayD<f64>, t: &ArrayD<f64>) -> f64 {
    let c = *y.shape().last().unwrap_or(&1);
    let rows = y.len() / c.max(1);
    let ys: Vec<f64> = y.iter().copied().collect();
    let ts: Vec<f64> = t.iter().copied().collect();
    let argmax = |v: &[f64]| {
        v.iter()
            .enumerate()
            .fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
    };
    let mut right = 0usize;
    for r in 0..rows {
        let yr = &ys[r * c..(r + 1) * c];
        right += match kind {
            Loss::CategoricalCrossentropy => {
                usize::from(argmax(yr) == argmax(&ts[r * c..(r + 1) * c]))
            }
            Loss::SparseCategoricalCrossentropy => usize::from(argmax(yr) as f64 == ts[r]),
            _ => {
                yr.iter()
                    .zip(&ts[r * c..(r + 1) * c])
                    .filter(|(p, q)| (p.round() - q.round()).abs() < 0.5)
                    .count()
                    / c.max(1)
            }
        };
    }
    right as f64 / rows.max(1) as f64
}
