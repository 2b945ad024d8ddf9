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
    /// Staged weights, with their layer and name.
    weights: Vec<((usize, &'static str), Vec<f32>)>,
    states: States<f32>,
    cache: HashMap<lower::Shapes, Arc<Compiled>>,
    /// The most recently used function, with where each of its inputs comes from.
    last: Option<(lower::Shapes, Arc<Compiled>, Arc<[Source]>)>,
    options: jit::Options,
    arena: Vec<f32>,
    /// x and the states, laid out for the generated code, reused from call to call.
    staged: Vec<Vec<f32>>,
}

/// Where a function input comes from, resolved once per compiled function.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The batch (staged).
    X,
    /// `weights[i]`.
    Weight(usize),
    /// A stateful layer's state (staged).
    State(usize, &'static str),
}

/// Lays out `src` (rows of `cols`) as generated code reads it: rows `padded_stride` apart,
/// padding and slack zeroed.
pub fn stage(src: &[f32], cols: usize, dst: &mut Vec<f32>) {
    let cols = cols.max(1);
    let rows = src.len() / cols;
    let stride = jit::plan::padded_stride(rows, cols);
    dst.clear();
    dst.resize(jit::plan::padded_len(rows, cols), 0.0);
    for (r, row) in src.chunks(cols).enumerate() {
        dst[r * stride..r * stride + cols].copy_from_slice(row);
    }
}

/// Copies a matrix out of the arena (outputs always live there).
pub fn gather(arena: &[f32], loc: &jit::plan::Loc, out: &mut [f32]) {
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
            weights: Vec::new(),
            states: States::new(),
            cache: HashMap::new(),
            last: None,
            options,
            arena: Vec::new(),
            staged: Vec::new(),
        };
        m.set_weights(weights);
        m
    }

    /// The model.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Replaces the weights: float32, laid out as the generated code expects
    /// (rows padded by [`jit::plan::padded_stride`], slack at the end).
    pub fn set_weights(&mut self, weights: &Weights) {
        self.weights.clear();
        self.last = None;
        for (name, t) in &weights.tensors {
            let mut parts = name.splitn(3, '.');
            let (_, layer, w) = (parts.next(), parts.next(), parts.next());
            if let (Some(layer), Some(w)) = (layer.and_then(|l| l.parse().ok()), w) {
                let cols = *t.shape().last().unwrap_or(&1);
                let values: Vec<f32> = t.iter().map(|&v| v as f32).collect();
                let mut staged = Vec::new();
                stage(&values, cols, &mut staged);
                let name = ["kernel", "recurrent_kernel", "bias"]
                    .into_iter()
                    .find(|n| *n == w);
                if let Some(name) = name {
                    self.weights.push(((layer, name), staged));
                }
            }
        }
    }

    /// Zeroes the stateful layers' states.
    pub fn reset_states(&mut self) {
        self.states.reset();
    }

    /// Fixes the batch size of a stateful model anew (Keras: rebuilding it with another
    /// `batch_input_shape`): the states start from zero, one row per batch row.
    pub fn set_batch_size(&mut self, batch: usize) -> Result<()> {
        if batch == 0 {
            return Err(Error::Usage("batch size must be at least 1".into()));
        }
        self.states = States::new();
        let mut pinned = self.spec.clone();
        pinned.input.batch = Some(batch);
        self.states.admit(&pinned, batch)
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
        let (c, sources) = match &self.last {
            Some((s, c, src)) if *s == shapes => (c.clone(), src.clone()),
            _ => {
                let c = self.compiled(shapes)?;
                let src = c
                    .func
                    .input_roles
                    .iter()
                    .map(|role| match role {
                        InputRole::X => Ok(Source::X),
                        InputRole::State { layer, slot } => Ok(Source::State(*layer, slot)),
                        r @ (InputRole::DY
                        | InputRole::Target
                        | InputRole::Slot { .. }
                        | InputRole::Hyper) => {
                            Err(Error::Internal(format!("a forward function takes no {r}")))
                        }
                        InputRole::Weight { layer, name } => self
                            .weights
                            .iter()
                            .position(|(k, _)| *k == (*layer, *name))
                            .map(Source::Weight)
                            .ok_or_else(|| {
                                Error::Internal(format!("no weight layers.{layer}.{name}"))
                            }),
                    })
                    .collect::<Result<Arc<[Source]>>>()?;
                self.last = Some((shapes, c.clone(), src.clone()));
                (c, src)
            }
        };
        if self.arena.len() < c.plan.arena_len {
            self.arena.resize(c.plan.arena_len, 0.0);
        }
        // Stage x and the states (weights were staged when set).
        let n = sources.len();
        self.staged.resize_with(n, Vec::new);
        let xcols = *shape.last().unwrap_or(&1);
        for (k, src) in sources.iter().enumerate() {
            match *src {
                Source::X => stage(x, xcols, &mut self.staged[k]),
                Source::State(layer, slot) => {
                    let s = &self.states.values[&(layer, slot)];
                    let cols = *s.shape().last().unwrap_or(&1);
                    stage(
                        s.as_slice()
                            .ok_or_else(|| Error::Internal("state not contiguous".into()))?,
                        cols,
                        &mut self.staged[k],
                    );
                }
                Source::Weight(_) => {}
            }
        }
        {
            const ON_STACK: usize = 32;
            let mut small: [&[f32]; ON_STACK] = [&[]; ON_STACK];
            let mut heap: Vec<&[f32]> = Vec::new();
            for (k, src) in sources.iter().enumerate() {
                let s: &[f32] = match *src {
                    Source::X | Source::State(..) => &self.staged[k],
                    Source::Weight(i) => &self.weights[i].1,
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
                OutputRole::Grad(_) | OutputRole::Loss | OutputRole::Updated(_) => {}
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
