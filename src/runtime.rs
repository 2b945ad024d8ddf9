//! The runtime of compiled models: weights and states in f32, native code
//! compiled per batch size and sequence length and cached, and prediction as
//! Keras's `predict` does it, with stateful layers carrying one state row
//! per batch row from call to call.

use crate::error::{Error, Result};
use crate::ir::{lower, InputRole, OutputRole};
use crate::jit::{self, plan::Base, Compiled};
use crate::model::ModelSpec;
use crate::reference::{batch_shapes, join_batches, split_batches, States};
use crate::weights::Weights;
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;
use std::sync::Arc;

/// The result of one batch.
#[derive(Clone, Debug)]
pub struct BatchOutput {
    /// The model output.
    pub y: ArrayD<f32>,
    /// `(layer, slot, state)` for every recurrent layer, `h` before `c`.
    pub states: Vec<(usize, &'static str, ArrayD<f32>)>,
}

/// A model with its weights, compiled to native code on first use of each batch shape.
#[derive(Debug)]
pub struct CompiledModel {
    spec: ModelSpec,
    weights: HashMap<(usize, String), Vec<f32>>,
    states: States<f32>,
    cache: HashMap<lower::Shapes, Arc<Compiled>>,
    options: jit::Options,
    arena: Vec<f32>,
}

impl CompiledModel {
    /// A model with `weights`, compiled lazily with `options`.
    pub fn new(spec: ModelSpec, weights: &Weights, options: jit::Options) -> CompiledModel {
        let mut m = CompiledModel {
            spec,
            weights: HashMap::new(),
            states: States::new(),
            cache: HashMap::new(),
            options,
            arena: Vec::new(),
        };
        m.set_weights(weights);
        m
    }

    /// The model.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Replaces the weights (as float32).
    pub fn set_weights(&mut self, weights: &Weights) {
        self.weights.clear();
        for (name, t) in &weights.tensors {
            let mut parts = name.splitn(3, '.');
            let (_, layer, w) = (parts.next(), parts.next(), parts.next());
            if let (Some(layer), Some(w)) = (layer.and_then(|l| l.parse().ok()), w) {
                self.weights.insert(
                    (layer, w.to_string()),
                    t.iter().map(|&v| v as f32).collect(),
                );
            }
        }
    }

    /// Zeroes the stateful layers' states.
    pub fn reset_states(&mut self) {
        self.states.reset();
    }

    /// The compiled function for these sizes (compiled on first use, then cached).
    pub fn compiled(&mut self, shapes: lower::Shapes) -> Result<Arc<Compiled>> {
        if let Some(c) = self.cache.get(&shapes) {
            return Ok(c.clone());
        }
        let f = lower::lower(&self.spec, shapes)?;
        let c = Arc::new(jit::compile(f, &self.options)?);
        self.cache.insert(shapes, c.clone());
        Ok(c)
    }

    /// Runs one batch; stateful layers start from, and update, the carried states.
    pub fn predict_batch(&mut self, x: &ArrayD<f32>) -> Result<BatchOutput> {
        let shapes = batch_shapes(&self.spec, x.shape())?;
        self.states.admit(&self.spec, shapes.batch)?;
        let c = self.compiled(shapes)?;
        let x = x.as_standard_layout();
        let xs = x
            .as_slice()
            .ok_or_else(|| Error::Internal("input not contiguous".into()))?;
        let mut inputs: Vec<&[f32]> = Vec::with_capacity(c.func.input_roles.len());
        for role in &c.func.input_roles {
            inputs.push(match role {
                InputRole::X => xs,
                InputRole::Weight { layer, name } => self
                    .weights
                    .get(&(*layer, name.to_string()))
                    .ok_or_else(|| Error::Internal(format!("no weight layers.{layer}.{name}")))?,
                InputRole::State { layer, slot } => self.states.values[&(*layer, *slot)]
                    .as_slice()
                    .ok_or_else(|| Error::Internal("state not contiguous".into()))?,
            });
        }
        if self.arena.len() < c.plan.arena_len {
            self.arena.resize(c.plan.arena_len, 0.0);
        }
        c.code.call(&inputs, &mut self.arena)?;
        let mut y = None;
        let mut states = Vec::new();
        for (k, ((role, v), loc)) in c.func.outputs.iter().zip(&c.plan.outputs).enumerate() {
            let src: &[f32] = match loc.base {
                Base::Arena => &self.arena,
                Base::Input(i) => inputs[i],
            };
            let mut out = Vec::with_capacity(loc.rows * loc.cols);
            for r in 0..loc.rows {
                let start = loc.offset as usize + r * loc.row_stride;
                out.extend_from_slice(&src[start..start + loc.cols]);
            }
            let a = ArrayD::from_shape_vec(IxDyn(c.func.shape(*v)), out)
                .map_err(|e| Error::Internal(format!("output {k}: {e}")))?;
            match role {
                OutputRole::Y => y = Some(a),
                OutputRole::State { layer, slot } => states.push((*layer, *slot, a)),
            }
        }
        for (layer, slot, a) in &states {
            if self.spec.layers[*layer].stateful {
                self.states.values.insert((*layer, *slot), a.clone());
            }
        }
        let y = y.ok_or_else(|| Error::Internal("function without output".into()))?;
        Ok(BatchOutput { y, states })
    }

    /// Keras's `predict(x, batch_size)`: consecutive batches, states carried.
    pub fn predict(&mut self, x: &ArrayD<f32>, batch_size: usize) -> Result<ArrayD<f32>> {
        let chunks = split_batches(&self.spec, x, batch_size)?;
        let mut ys = Vec::with_capacity(chunks.len());
        for c in chunks {
            ys.push(self.predict_batch(&c)?.y);
        }
        join_batches(ys)
    }
}
