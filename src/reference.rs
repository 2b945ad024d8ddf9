//! The reference runner: a model's weights and states, run by the IR
//! interpreter. It defines what "the same as Keras" means for every other
//! executor (the JIT is tested against it), and serves `lstmc run` on the
//! interpreter with `--engine interp`.

use crate::error::{Error, Result};
use crate::interp;
use crate::ir::{self, lower::Shapes, Function, InputRole, OutputRole};
use crate::model::ModelSpec;
use crate::weights::Weights;
use ndarray::{concatenate, ArrayD, Axis, IxDyn};
use std::collections::HashMap;

/// The result of one batch: the output and every recurrent layer's final state.
#[derive(Clone, Debug)]
pub struct BatchOutput {
    /// The model output.
    pub y: ArrayD<f64>,
    /// `(layer, slot, state)` for every recurrent layer, `h` before `c`.
    pub states: Vec<(usize, &'static str, ArrayD<f64>)>,
}

/// Recurrent states of the stateful layers: one row per batch row.
#[derive(Clone, Debug, Default)]
pub struct States<T> {
    /// The batch size the states were made for, once known.
    pub batch: Option<usize>,
    /// `(layer, slot) -> (batch, units)`.
    pub values: HashMap<(usize, &'static str), ArrayD<T>>,
}

impl<T: Clone + Default> States<T> {
    /// No states yet; the batch size is fixed by the model or the first call.
    pub fn new() -> States<T> {
        States {
            batch: None,
            values: HashMap::new(),
        }
    }

    /// Zeroes every state (Keras's `reset_states`), keeping the batch size.
    pub fn reset(&mut self) {
        for v in self.values.values_mut() {
            v.fill(T::default());
        }
    }

    /// Checks a batch against the states' batch size, fixing it on first use.
    pub fn admit(&mut self, spec: &ModelSpec, batch: usize) -> Result<()> {
        if !spec.is_stateful() {
            return Ok(());
        }
        let fixed = self.batch.or(spec.input.batch);
        match fixed {
            Some(b) if b != batch => Err(Error::Usage(format!(
                "model `{}` is stateful with batch size {b} (it keeps one state row per batch row), \
                 but was called with a batch of {batch}; compile it again for batch size {batch} \
                 (`--batch-size {batch}` on the command line, `set_batch_size({batch})` in Rust), \
                 which starts from zero states",
                spec.name
            ))),
            _ => {
                if self.batch.is_none() {
                    self.batch = Some(batch);
                    for (i, l) in spec.layers.iter().enumerate().filter(|(_, l)| l.stateful) {
                        for &slot in l.state_names() {
                            self.values.insert((i, slot), ArrayD::from_elem(IxDyn(&[batch, l.units]), T::default()));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// The sizes a batch of `shape` runs with, or why it does not fit the model.
pub fn batch_shapes(spec: &ModelSpec, shape: &[usize]) -> Result<Shapes> {
    let f = spec.input.features;
    // Formatted only on error: this runs on every call.
    let bad = || {
        let want = if spec.input.sequence {
            match spec.input.time {
                Some(t) => format!("(batch, {t}, {f})"),
                None => format!("(batch, time, {f})"),
            }
        } else {
            format!("(batch, {f})")
        };
        Error::Usage(format!(
            "model `{}` takes inputs shaped {want}; got {:?}",
            spec.name, shape
        ))
    };
    let shapes = match (spec.input.sequence, shape) {
        (true, &[b, t, ff]) if ff == f && spec.input.time.is_none_or(|tt| tt == t) && t > 0 => {
            Shapes { batch: b, time: t }
        }
        (false, &[b, ff]) if ff == f => Shapes { batch: b, time: 1 },
        _ => return Err(bad()),
    };
    if shapes.batch == 0 {
        return Err(Error::Usage("an empty batch (0 samples)".into()));
    }
    Ok(shapes)
}

/// A model run by the interpreter.
#[derive(Debug)]
pub struct Reference {
    spec: ModelSpec,
    weights: Weights,
    states: States<f64>,
    cache: HashMap<Shapes, Function>,
}

impl Reference {
    /// A runner for `spec` with `weights`; states start at zero.
    pub fn new(spec: ModelSpec, weights: Weights) -> Reference {
        Reference {
            spec,
            weights,
            states: States::new(),
            cache: HashMap::new(),
        }
    }

    /// The model.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Zeroes the stateful layers' states.
    pub fn reset_states(&mut self) {
        self.states.reset();
    }

    /// The forward function for these sizes (lowered, verified, cached).
    pub fn function(&mut self, shapes: Shapes) -> Result<&Function> {
        if !self.cache.contains_key(&shapes) {
            let f = ir::lower::lower(&self.spec, shapes)?;
            ir::verify::verify(&f)?;
            self.cache.insert(shapes, f);
        }
        Ok(&self.cache[&shapes])
    }

    /// Runs one batch; stateful layers start from, and update, the carried states.
    pub fn predict_batch(&mut self, x: &ArrayD<f64>) -> Result<BatchOutput> {
        let shapes = batch_shapes(&self.spec, x.shape())?;
        self.states.admit(&self.spec, shapes.batch)?;
        self.function(shapes)?;
        let f = &self.cache[&shapes];
        let mut inputs = Vec::with_capacity(f.input_roles.len());
        for role in &f.input_roles {
            inputs.push(match role {
                InputRole::X => x.clone(),
                InputRole::Weight { layer, name } => {
                    self.weights.get(*layer, name).cloned().ok_or_else(|| {
                        Error::Internal(format!("no weight layers.{layer}.{name}"))
                    })?
                }
                InputRole::State { layer, slot } => self.states.values[&(*layer, *slot)].clone(),
                r @ (InputRole::DY
                | InputRole::Target
                | InputRole::Slot { .. }
                | InputRole::Hyper
                | InputRole::Dropout { .. }) => {
                    return Err(Error::Internal(format!("a forward function takes no {r}")))
                }
            });
        }
        let outs = interp::run(f, &inputs)?;
        let mut y = None;
        let mut states = Vec::new();
        for ((role, _), v) in f.outputs.iter().zip(outs) {
            match role {
                OutputRole::Y => y = Some(v),
                OutputRole::Grad(_) | OutputRole::Loss | OutputRole::Updated(_) => {}
                OutputRole::State { layer, slot } => {
                    if self.spec.layers[*layer].stateful {
                        self.states.values.insert((*layer, *slot), v.clone());
                    }
                    states.push((*layer, *slot, v));
                }
            }
        }
        let y = y.ok_or_else(|| Error::Internal("function without output".into()))?;
        Ok(BatchOutput { y, states })
    }

    /// Keras's `predict(x, batch_size)`: consecutive batches, states carried.
    pub fn predict(&mut self, x: &ArrayD<f64>, batch_size: usize) -> Result<ArrayD<f64>> {
        let chunks = split_batches(&self.spec, x, batch_size)?;
        let mut ys = Vec::with_capacity(chunks.len());
        for c in chunks {
            ys.push(self.predict_batch(&c)?.y);
        }
        join_batches(ys)
    }
}

/// Whether `n` samples can be predicted in batches of `batch_size`: at least one
/// sample, and whole batches for a stateful model.
pub fn check_batches(spec: &ModelSpec, n: usize, batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(Error::Usage("batch size must be at least 1".into()));
    }
    if n == 0 {
        return Err(Error::Usage("no samples to predict".into()));
    }
    if spec.is_stateful() && !n.is_multiple_of(batch_size) {
        return Err(Error::Usage(format!(
            "model `{}` is stateful with batch size {batch_size}: the number of samples ({n}) must be a multiple of it",
            spec.name
        )));
    }
    Ok(())
}

/// Splits `x` into consecutive batches of `batch_size` (a smaller last one
/// unless the model is stateful, where a remainder is an error).
pub fn split_batches<T: Clone>(
    spec: &ModelSpec,
    x: &ArrayD<T>,
    batch_size: usize,
) -> Result<Vec<ArrayD<T>>> {
    let n = *x
        .shape()
        .first()
        .ok_or_else(|| Error::Usage("input has no batch axis".into()))?;
    check_batches(spec, n, batch_size)?;
    Ok((0..n)
        .step_by(batch_size)
        .map(|s| {
            x.slice_axis(Axis(0), (s..(s + batch_size).min(n)).into())
                .to_owned()
        })
        .collect())
}

/// Concatenates per-batch outputs along the batch axis.
pub fn join_batches<T: Clone>(ys: Vec<ArrayD<T>>) -> Result<ArrayD<T>> {
    let views: Vec<_> = ys.iter().map(|y| y.view()).collect();
    concatenate(Axis(0), &views).map_err(|e| Error::Internal(e.to_string()))
}
