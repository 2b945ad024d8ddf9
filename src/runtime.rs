//! The runtime of compiled models: weights and states in f32, native code
//! compiled per batch size and sequence length and cached, and prediction as
//! Keras's `predict` does it, with stateful layers carrying one state row
//! per batch row from call to call.

use crate::error::{Error, Result};
use crate::ir::{lower, InputRole, OutputRole};
use crate::jit::{self, Compiled};
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
    /// The most recently used entry of `cache`, checked first.
    last: Option<(lower::Shapes, Arc<Compiled>)>,
    options: jit::Options,
    arena: Vec<f32>,
}

/// Copies a matrix out of the arena (outputs always live there).
fn gather(arena: &[f32], loc: &jit::plan::Loc, out: &mut [f32]) {
    for r in 0..loc.rows {
        let start = loc.offset as usize + r * loc.row_stride;
        out[r * loc.cols..(r + 1) * loc.cols].copy_from_slice(&arena[start..start + loc.cols]);
    }
}

impl CompiledModel {
    /// A model with `weights`, compiled lazily with `options`.
    pub fn new(spec: ModelSpec, weights: &Weights, options: jit::Options) -> CompiledModel {
        let mut m = CompiledModel {
            spec,
            weights: HashMap::new(),
            states: States::new(),
            cache: HashMap::new(),
            last: None,
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

    /// Replaces the weights: float32, rows laid out with the stride the code expects
    /// ([`jit::plan::padded_stride`]).
    pub fn set_weights(&mut self, weights: &Weights) {
        self.weights.clear();
        for (name, t) in &weights.tensors {
            let mut parts = name.splitn(3, '.');
            let (_, layer, w) = (parts.next(), parts.next(), parts.next());
            if let (Some(layer), Some(w)) = (layer.and_then(|l| l.parse().ok()), w) {
                let cols = (*t.shape().last().unwrap_or(&1)).max(1);
                let rows = t.len() / cols;
                let stride = jit::plan::padded_stride(rows, cols);
                let mut staged = vec![0.0f32; rows * stride];
                for (r, &v) in t.iter().enumerate() {
                    staged[(r / cols) * stride + r % cols] = v as f32;
                }
                self.weights.insert((layer, w.to_string()), staged);
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

    /// Runs the compiled function on `x` of `shape`; stateful layers start from the carried
    /// states and the states are updated. The outputs are left in the arena.
    fn execute(&mut self, x: &[f32], shape: &[usize]) -> Result<Arc<Compiled>> {
        let shapes = batch_shapes(&self.spec, shape)?;
        self.states.admit(&self.spec, shapes.batch)?;
        let c = match &self.last {
            Some((s, c)) if *s == shapes => c.clone(),
            _ => {
                let c = self.compiled(shapes)?;
                self.last = Some((shapes, c.clone()));
                c
            }
        };
        if self.arena.len() < c.plan.arena_len {
            self.arena.resize(c.plan.arena_len, 0.0);
        }
        {
            const ON_STACK: usize = 32;
            let mut small: [&[f32]; ON_STACK] = [&[]; ON_STACK];
            let mut heap: Vec<&[f32]> = Vec::new();
            let n = c.func.input_roles.len();
            for (k, role) in c.func.input_roles.iter().enumerate() {
                let s: &[f32] = match role {
                    InputRole::X => x,
                    InputRole::Weight { layer, name } => self
                        .weights
                        .get(&(*layer, name.to_string()))
                        .ok_or_else(|| {
                            Error::Internal(format!("no weight layers.{layer}.{name}"))
                        })?,
                    InputRole::State { layer, slot } => self.states.values[&(*layer, *slot)]
                        .as_slice()
                        .ok_or_else(|| Error::Internal("state not contiguous".into()))?,
                };
                if n <= ON_STACK {
                    small[k] = s;
                } else {
                    heap.push(s);
                }
            }
            let inputs = if n <= ON_STACK {
                &small[..n]
            } else {
                &heap[..]
            };
            c.code.call(inputs, &mut self.arena)?;
        }
        // Carry the stateful layers' final states to the next call.
        for ((role, _), loc) in c.func.outputs.iter().zip(&c.plan.outputs) {
            if let OutputRole::State { layer, slot } = role {
                if self.spec.layers[*layer].stateful {
                    let dst = self
                        .states
                        .values
                        .get_mut(&(*layer, *slot))
                        .and_then(|a| a.as_slice_mut())
                        .ok_or_else(|| Error::Internal("state not contiguous".into()))?;
                    gather(&self.arena, loc, dst);
                }
            }
        }
        Ok(c)
    }

    /// The fast path: predicts one batch `x` of `shape` into `y` (the output's elements in
    /// row-major order), without allocating. Stateful layers carry their states.
    pub fn predict_into(&mut self, x: &[f32], shape: &[usize], y: &mut [f32]) -> Result<()> {
        let want: usize = shape.iter().product();
        if x.len() != want {
            return Err(Error::Usage(format!(
                "input has {} elements, but its shape {:?} has {want}",
                x.len(),
                shape
            )));
        }
        let c = self.execute(x, shape)?;
        let loc = c.plan.outputs[0];
        if y.len() != loc.rows * loc.cols {
            return Err(Error::Usage(format!(
                "output buffer has {} elements; the output has {}",
                y.len(),
                loc.rows * loc.cols
            )));
        }
        gather(&self.arena, &loc, y);
        Ok(())
    }

    /// Runs one batch; stateful layers start from, and update, the carried states.
    pub fn predict_batch(&mut self, x: &ArrayD<f32>) -> Result<BatchOutput> {
        let x = x.as_standard_layout();
        let xs = x
            .as_slice()
            .ok_or_else(|| Error::Internal("input not contiguous".into()))?;
        let c = self.execute(xs, x.shape())?;
        let mut y = None;
        let mut states = Vec::new();
        for (k, ((role, v), loc)) in c.func.outputs.iter().zip(&c.plan.outputs).enumerate() {
            let mut out = vec![0.0; loc.rows * loc.cols];
            gather(&self.arena, loc, &mut out);
            let a = ArrayD::from_shape_vec(IxDyn(c.func.shape(*v)), out)
                .map_err(|e| Error::Internal(format!("output {k}: {e}")))?;
            match role {
                OutputRole::Y => y = Some(a),
                OutputRole::State { layer, slot } => states.push((*layer, *slot, a)),
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
