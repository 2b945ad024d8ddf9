//! The runtime of compiled models: weights and states in f32, native code
//! compiled per batch size and sequence length and cached, and prediction as
//! Keras's `predict` does it, with stateful layers carrying one state row
//! per batch row from call to call.

use crate::error::{Error, Result};
use crate::ir::{lower, InputRole, OutputRole};
use crate::jit::{self, Buf, Compiled};
use crate::model::ModelSpec;
use crate::reference::{batch_shapes, join_batches, split_batches, States};
use crate::weights::Weights;
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The result of one batch.
///
/// ```
/// let mut net = lstmc::Model::parse("LSTM 3 input_dim=1 input_length=2\nDense 1\n")?
///     .compile(&Default::default())?;
/// let p = net.predictor();
/// let out = p.predict_stream(&mut p.stream(), &ndarray::ArrayD::ones(ndarray::IxDyn(&[4, 2, 1])))?;
/// assert_eq!(out.y.shape(), &[4, 1]);
/// let slots: Vec<_> = out.states.iter().map(|(layer, slot, s)| (*layer, *slot, s.shape().to_vec())).collect();
/// assert_eq!(slots, [(0, "h", vec![4, 3]), (0, "c", vec![4, 3])]);
/// # Ok::<(), lstmc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BatchOutput {
    /// The model output.
    pub y: ArrayD<f32>,
    /// `(layer, slot, state)` for every recurrent layer, `h` before `c`.
    pub states: Vec<(usize, &'static str, ArrayD<f32>)>,
}

/// A model with its weights, compiled to native code on first use of each batch shape,
/// with one stream of states (Keras's model-held states).
///
/// For predictions from many threads at once, take a [`Predictor`]
/// ([`CompiledModel::predictor`]): it shares the native code and the weights, and each
/// stateful sequence gets its own [`Stream`].
#[derive(Debug)]
pub struct CompiledModel {
    shared: Arc<Shared>,
    stream: Stream,
}

/// Batches of at least this much work (multiply-adds times two, over every layer and
/// step) are split between threads by rows ([`Shared::parts`]).
const PART_MIN_FLOPS: usize = 1 << 24;

/// A compiled function with where each of its inputs comes from.
type Entry = (Arc<Compiled>, Arc<[Source]>);

/// What threads share: the model, its staged weights, and the native code compiled so far.
#[derive(Debug)]
struct Shared {
    spec: ModelSpec,
    /// Staged weights, with their layer and name.
    weights: Vec<((usize, &'static str), Buf)>,
    /// Compiled functions by sizes; kept when the weights change (the code reads them).
    cache: Arc<Mutex<HashMap<lower::Shapes, Entry>>>,
    /// The same for the blocks of rows of a batch split between threads, compiled for one
    /// thread each ([`Shared::parts`]).
    part_cache: Arc<Mutex<HashMap<lower::Shapes, Entry>>>,
    options: jit::Options,
}

/// One stream of batches through a model: the states of its stateful layers (one row per
/// batch row, carried from call to call) and the scratch memory of its calls.
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let mut net = lstmc::Model::parse("LSTM 3 input_dim=1 input_length=1 batch_size=1 stateful\n")?
///     .compile(&Default::default())?;
/// let p = net.predictor();
/// let (mut a, mut b) = (p.stream(), p.stream()); // two sequences, served side by side
/// let one = ArrayD::<f32>::ones(IxDyn(&[1, 1, 1]));
/// let a1 = p.predict_stream(&mut a, &one)?.y;
/// let a2 = p.predict_stream(&mut a, &one)?.y;
/// let b1 = p.predict_stream(&mut b, &one)?.y;
/// assert_eq!(a1, b1); // b starts from zeros, as a did
/// assert_ne!(a1, a2); // a carried its state
/// # Ok::<(), lstmc::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Stream {
    states: States<f32>,
    /// The scratch memory of a batch run whole.
    whole: Part,
    /// The most recently used function.
    last: Option<(lower::Shapes, Entry)>,
    /// The scratch memory of the parts of a batch split between threads
    /// ([`Shared::parts`]), and their most recently used function.
    parts: Vec<Part>,
    last_part: Option<(lower::Shapes, Entry)>,
}

/// What one call of generated code needs besides the weights: its arena, and x and the
/// states laid out for it, reused from call to call.
#[derive(Debug, Default)]
struct Part {
    arena: Buf,
    staged: Vec<Buf>,
}

/// Output `loc` of a call into `out`: from `whole`'s arena, or from each of `parts`' in
/// turn when the batch ran in parts.
fn gather_parts(whole: &Part, parts: &[Part], ran: &Ran, loc: &jit::plan::Loc, out: &mut [f32]) {
    if ran.parts == 1 {
        return gather(&whole.arena, loc, out);
    }
    let n = loc.rows * loc.cols;
    for (part, out) in parts.iter().zip(out.chunks_mut(n)) {
        gather(&part.arena, loc, out);
    }
}

/// Block `p` of `parts` equal blocks of `a`.
fn rows(a: &[f32], p: usize, parts: usize) -> &[f32] {
    if parts == 1 {
        return a; // no divisions on the batch-1 path (W1's call is 0.2 µs)
    }
    &a[p * a.len() / parts..(p + 1) * a.len() / parts]
}

/// The carried state `key` (admitted for the batch before the call), as one slice.
fn state<'s>(states: &'s States<f32>, key: (usize, &'static str)) -> Result<&'s [f32]> {
    states
        .values
        .get(&key)
        .and_then(|a| a.as_slice())
        .ok_or_else(|| Error::Internal(format!("no state layers.{}.{}", key.0, key.1)))
}

/// Where a call left its outputs: in the stream's arena (`parts == 1`), or in the
/// arenas of `parts` equal blocks of the batch's rows, in order.
struct Ran {
    compiled: Arc<Compiled>,
    parts: usize,
}

impl Stream {
    /// Output `loc` of a call into `out` (its elements in row-major order).
    fn gather(&self, ran: &Ran, loc: &jit::plan::Loc, out: &mut [f32]) {
        gather_parts(&self.whole, &self.parts, ran, loc, out)
    }

    /// Zeroes the stateful layers' states (Keras's `reset_states`).
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// let mut net = lstmc::Model::parse("GRU 2 input_dim=1 input_length=2 batch_size=1 stateful\n")?
    ///     .compile(&Default::default())?;
    /// let p = net.predictor();
    /// let mut s = p.stream();
    /// let x = ArrayD::<f32>::ones(IxDyn(&[1, 2, 1]));
    /// let first = p.predict_stream(&mut s, &x)?.y;
    /// s.reset_states();
    /// assert_eq!(p.predict_stream(&mut s, &x)?.y, first);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn reset_states(&mut self) {
        self.states.reset();
    }

    /// The carried states of the stateful layers: `(layer, "h" or "c", [batch, units])`,
    /// none before the first call.
    ///
    /// ```
    /// let mut net = lstmc::Model::parse("LSTM 2 input_dim=1 input_length=2 batch_size=3 stateful\n")?
    ///     .compile(&Default::default())?;
    /// let p = net.predictor();
    /// let mut s = p.stream();
    /// p.predict_stream(&mut s, &ndarray::ArrayD::ones(ndarray::IxDyn(&[3, 2, 1])))?;
    /// let names: Vec<_> = s.states().iter().map(|(l, n, a)| (*l, *n, a.shape().to_vec())).collect();
    /// assert_eq!(names, [(0, "h", vec![3, 2]), (0, "c", vec![3, 2])]);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn states(&self) -> Vec<(usize, &'static str, ArrayD<f32>)> {
        let mut v: Vec<_> = self
            .states
            .values
            .iter()
            .map(|(&(l, s), a)| (l, s, a.clone()))
            .collect();
        v.sort_by_key(|&(l, s, _)| (l, s != "h"));
        v
    }
}

/// A handle for predicting from many threads at once (`Send + Sync`, cheap to clone):
/// the native code and the weights of a [`CompiledModel`] as they were when it was made.
/// Code compiled for a new batch shape by any thread is shared with all.
///
/// ```
/// fn shareable<T: Send + Sync + Clone>(_: &T) {}
/// let mut net = lstmc::Model::parse("Dense 2 input_dim=2\n")?.compile(&Default::default())?;
/// shareable(&net.predictor());
/// # Ok::<(), lstmc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Predictor {
    shared: Arc<Shared>,
}

impl Predictor {
    /// A new stream: stateful layers start from zero states.
    ///
    /// ```
    /// let mut net = lstmc::Model::parse("LSTM 2 input_dim=1 input_length=2 batch_size=1 stateful\n")?
    ///     .compile(&Default::default())?;
    /// assert!(net.predictor().stream().states().is_empty());
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn stream(&self) -> Stream {
        Stream::default()
    }

    /// Runs one batch on `stream`: stateful layers start from, and update, its states.
    /// Returns the output and every recurrent layer's final states.
    ///
    /// ```
    /// let mut net = lstmc::Model::parse("SimpleRNN 2 input_dim=1 input_length=3\n")?.compile(&Default::default())?;
    /// let p = net.predictor();
    /// let out = p.predict_stream(&mut p.stream(), &ndarray::ArrayD::ones(ndarray::IxDyn(&[4, 3, 1])))?;
    /// assert_eq!(out.y.shape(), &[4, 2]);
    /// assert_eq!(out.states[0].2, out.y); // a SimpleRNN's output is its last state
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn predict_stream(&self, stream: &mut Stream, x: &ArrayD<f32>) -> Result<BatchOutput> {
        self.shared.predict_batch(stream, x)
    }

    /// Runs one batch from zero states (a stream of one batch).
    ///
    /// ```
    /// let mut net = lstmc::Model::parse("Dense 3 input_dim=2 activation=softmax\n")?.compile(&Default::default())?;
    /// let y = net.predictor().predict(&ndarray::ArrayD::zeros(ndarray::IxDyn(&[5, 2])))?;
    /// assert!((y.sum() - 5.0).abs() < 1e-5); // each row sums to one
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn predict(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        Ok(self.shared.predict_batch(&mut Stream::default(), x)?.y)
    }

    /// The model.
    ///
    /// ```
    /// let mut net = lstmc::Model::parse("Dense 3 input_dim=2\n")?.compile(&Default::default())?;
    /// assert_eq!(net.predictor().spec().layers[0].units, 3);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn spec(&self) -> &ModelSpec {
        &self.shared.spec
    }
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
pub fn stage(src: &[f32], cols: usize, dst: &mut Buf) {
    let cols = cols.max(1);
    let rows = src.len() / cols;
    let stride = jit::plan::padded_stride(rows, cols);
    // Rows, then their padding, then the slack, each written once (clearing the whole
    // buffer first took 5% of W1's forward call).
    dst.resize(jit::plan::padded_len(rows, cols), 0.0);
    for (r, row) in src.chunks(cols).enumerate() {
        dst[r * stride..r * stride + cols].copy_from_slice(row);
        dst[r * stride + cols..(r + 1) * stride].fill(0.0);
    }
    dst[rows * stride..].fill(0.0);
}

/// Copies a matrix out of the arena (outputs always live there).
pub fn gather(arena: &[f32], loc: &jit::plan::Loc, out: &mut [f32]) {
    for r in 0..loc.rows {
        let start = loc.offset as usize + r * loc.row_stride;
        out[r * loc.cols..(r + 1) * loc.cols].copy_from_slice(&arena[start..start + loc.cols]);
    }
}

/// Weights staged for generated code: float32, rows padded by [`jit::plan::padded_stride`],
/// slack at the end.
fn stage_weights(weights: &Weights) -> Vec<((usize, &'static str), Buf)> {
    let mut out = Vec::new();
    for (name, t) in &weights.tensors {
        let mut parts = name.splitn(3, '.');
        let (_, layer, w) = (parts.next(), parts.next(), parts.next());
        if let (Some(layer), Some(w)) = (layer.and_then(|l| l.parse().ok()), w) {
            let cols = *t.shape().last().unwrap_or(&1);
            let values: Vec<f32> = t.iter().map(|&v| v as f32).collect();
            let mut staged = Buf::new();
            stage(&values, cols, &mut staged);
            let name = ["kernel", "recurrent_kernel", "bias"]
                .into_iter()
                .find(|n| *n == w);
            if let Some(name) = name {
                out.push(((layer, name), staged));
            }
        }
    }
    out
}

impl CompiledModel {
    /// A model with `weights`, compiled lazily with `options`.
    pub fn new(spec: ModelSpec, weights: &Weights, options: jit::Options) -> CompiledModel {
        CompiledModel {
            shared: Arc::new(Shared {
                spec,
                weights: stage_weights(weights),
                cache: Arc::new(Mutex::new(HashMap::new())),
                part_cache: Arc::new(Mutex::new(HashMap::new())),
                options,
            }),
            stream: Stream::default(),
        }
    }

    /// The model.
    pub fn spec(&self) -> &ModelSpec {
        &self.shared.spec
    }

    /// A handle that predicts from any thread with the current weights.
    pub fn predictor(&self) -> Predictor {
        Predictor {
            shared: self.shared.clone(),
        }
    }

    /// Replaces the weights (the compiled code is kept). Predictors made before keep the
    /// weights they were made with.
    pub fn set_weights(&mut self, weights: &Weights) {
        self.shared = Arc::new(Shared {
            spec: self.shared.spec.clone(),
            weights: stage_weights(weights),
            cache: self.shared.cache.clone(),
            part_cache: self.shared.part_cache.clone(),
            options: self.shared.options,
        });
        self.stream.last = None;
        self.stream.last_part = None;
    }

    /// Zeroes the stateful layers' states.
    pub fn reset_states(&mut self) {
        self.stream.reset_states();
    }

    /// The carried states (see [`Stream::states`]).
    pub fn states(&self) -> Vec<(usize, &'static str, ArrayD<f32>)> {
        self.stream.states()
    }

    /// Fixes the batch size of a stateful model anew (Keras: rebuilding it with another
    /// `batch_input_shape`): the states start from zero, one row per batch row.
    pub fn set_batch_size(&mut self, batch: usize) -> Result<()> {
        if batch == 0 {
            return Err(Error::Usage("batch size must be at least 1".into()));
        }
        self.stream.states = States::new();
        let mut pinned = self.shared.spec.clone();
        pinned.input.batch = Some(batch);
        self.stream.states.admit(&pinned, batch)
    }

    /// Into how many blocks of rows a batch of these sizes is split, each run whole on its
    /// own thread (1: not split; see `jit::Tuning::threads`).
    pub fn parts(&self, shapes: lower::Shapes) -> usize {
        self.shared.parts(shapes)
    }

    /// The compiled function that calls of these sizes run (compiled on first use, then
    /// cached): for a batch split between threads ([`CompiledModel::parts`]), the function
    /// of one block of its rows.
    pub fn compiled(&mut self, shapes: lower::Shapes) -> Result<Arc<Compiled>> {
        Ok(self.shared.block_entry(shapes)?.1 .0)
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
        let ran = self.shared.execute(&mut self.stream, x, shape)?;
        let loc = ran.compiled.plan.outputs[0];
        if y.len() != loc.rows * loc.cols * ran.parts {
            return Err(Error::Usage(format!(
                "output buffer has {} elements; the output has {}",
                y.len(),
                loc.rows * loc.cols * ran.parts
            )));
        }
        self.stream.gather(&ran, &loc, y);
        Ok(())
    }

    /// Runs one batch; stateful layers start from, and update, the carried states.
    pub fn predict_batch(&mut self, x: &ArrayD<f32>) -> Result<BatchOutput> {
        self.shared.predict_batch(&mut self.stream, x)
    }

    /// Keras's `predict(x, batch_size)`: consecutive batches, states carried.
    pub fn predict(&mut self, x: &ArrayD<f32>, batch_size: usize) -> Result<ArrayD<f32>> {
        let chunks = split_batches(&self.shared.spec, x, batch_size)?;
        let mut ys = Vec::with_capacity(chunks.len());
        for c in chunks {
            ys.push(self.predict_batch(&c)?.y);
        }
        join_batches(ys)
    }
}

impl Shared {
    /// The compiled function for these sizes and its input sources (compiled on first use).
    fn entry(&self, shapes: lower::Shapes) -> Result<Entry> {
        self.entry_in(&self.cache, shapes, &self.options)
    }

    /// The function for one block of rows of a batch of `shapes` split into `parts`
    /// blocks ([`Self::parts`]), compiled for one thread: `(block sizes, entry)`.
    fn block_entry(&self, shapes: lower::Shapes) -> Result<(lower::Shapes, Entry)> {
        let parts = self.parts(shapes);
        if parts == 1 {
            return Ok((shapes, self.entry(shapes)?));
        }
        let block = lower::Shapes {
            batch: shapes.batch / parts,
            ..shapes
        };
        let mut one = self.options;
        one.tuning.threads = 1;
        Ok((block, self.entry_in(&self.part_cache, block, &one)?))
    }

    /// [`Self::entry`] from `cache`, compiled with `options`.
    fn entry_in(
        &self,
        cache: &Mutex<HashMap<lower::Shapes, Entry>>,
        shapes: lower::Shapes,
        options: &jit::Options,
    ) -> Result<Entry> {
        // A poisoned lock only means another thread panicked while compiling: the map
        // itself is intact (entries are inserted whole).
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = cache.get(&shapes) {
            return Ok(e.clone());
        }
        let f = lower::lower(&self.spec, shapes)?;
        let c = Arc::new(jit::compile(f, options)?);
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
                | InputRole::Hyper
                | InputRole::Dropout { .. }) => {
                    Err(Error::Internal(format!("a forward function takes no {r}")))
                }
                InputRole::Weight { layer, name } => self
                    .weights
                    .iter()
                    .position(|(k, _)| *k == (*layer, *name))
                    .map(Source::Weight)
                    .ok_or_else(|| Error::Internal(format!("no weight layers.{layer}.{name}"))),
            })
            .collect::<Result<Arc<[Source]>>>()?;
        let e = (c, src);
        cache.insert(shapes, e.clone());
        Ok(e)
    }

    /// Into how many blocks of rows a batch of `shapes` is split, one per thread, each run
    /// whole by a function compiled for one thread: where each block has at least 8 rows
    /// and the batch is large work ([`PART_MIN_FLOPS`]). A recurrent layer's steps then
    /// need no hand-off between threads at all (each block's rows depend on its own rows
    /// only), where splitting each step's product and cells between threads hands rows
    /// over twice a step. 1: not split (nor when profiling).
    fn parts(&self, shapes: lower::Shapes) -> usize {
        let threads = self.options.tuning.threads;
        // A profile attributes one call at a time (`jit::profile`).
        if self.options.profile
            || threads < 2
            || shapes.batch < 16
            || !shapes.batch.is_multiple_of(threads)
        {
            return 1;
        }
        let steps = if self.spec.input.sequence {
            shapes.time
        } else {
            1
        };
        let mut width = self.spec.input.features;
        let mut flops = 0usize;
        for l in &self.spec.layers {
            let gates = l.kind.gates();
            flops = flops.saturating_add(
                2usize
                    .saturating_mul(shapes.batch)
                    .saturating_mul(steps)
                    .saturating_mul(gates * l.units)
                    .saturating_mul(width + if l.kind.is_recurrent() { l.units } else { 0 }),
            );
            width = l.units;
        }
        if flops >= PART_MIN_FLOPS && shapes.batch / threads >= 8 {
            threads
        } else {
            1
        }
    }

    /// Runs the compiled function on `x` of `shape` in `stream`: stateful layers start from
    /// its states, which are updated. The outputs are left in its arena, or in its parts'.
    fn execute(&self, stream: &mut Stream, x: &[f32], shape: &[usize]) -> Result<Ran> {
        let shapes = batch_shapes(&self.spec, shape)?;
        stream.states.admit(&self.spec, shapes.batch)?;
        let xcols = *shape.last().unwrap_or(&1);
        let parts = self.parts(shapes);
        if parts > 1 {
            let block = lower::Shapes {
                batch: shapes.batch / parts,
                ..shapes
            };
            let (c, sources) = match &stream.last_part {
                Some((s, e)) if *s == block => e.clone(),
                _ => {
                    let (block, e) = self.block_entry(shapes)?;
                    stream.last_part = Some((block, e.clone()));
                    e
                }
            };
            stream.parts.resize_with(parts, Part::default);
            let states = &stream.states;
            let slots: Vec<Mutex<&mut Part>> = stream.parts.iter_mut().map(Mutex::new).collect();
            // A part that panicked (the pool catches it) leaves no result.
            let results: Vec<Mutex<Option<Result<()>>>> =
                (0..parts).map(|_| Mutex::new(None)).collect();
            jit::fork_join(parts, &|p| {
                let mut part = slots[p].lock().unwrap_or_else(|e| e.into_inner());
                let r = self.call(&c, &sources, &mut part, x, xcols, states, (p, parts));
                *results[p].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
            drop(slots);
            for r in results {
                r.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_else(|| {
                        Err(Error::Internal("a block of rows did not run".into()))
                    })?;
            }
            let ran = Ran { compiled: c, parts };
            self.carry(stream, &ran)?;
            return Ok(ran);
        }
        let (c, sources) = match &stream.last {
            Some((s, e)) if *s == shapes => e.clone(),
            _ => {
                let e = self.entry(shapes)?;
                stream.last = Some((shapes, e.clone()));
                e
            }
        };
        let states = &stream.states;
        self.call(&c, &sources, &mut stream.whole, x, xcols, states, (0, 1))?;
        let ran = Ran {
            compiled: c,
            parts: 1,
        };
        self.carry(stream, &ran)?;
        Ok(ran)
    }

    /// One call of `c` with its arena and staged inputs in `part`, for block `p` of the
    /// `parts` equal blocks of rows of `x` and the carried `states` (`(0, 1)`: all).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn call(
        &self,
        c: &Compiled,
        sources: &[Source],
        part: &mut Part,
        x: &[f32],
        xcols: usize,
        states: &States<f32>,
        (p, parts): (usize, usize),
    ) -> Result<()> {
        if part.arena.len() < c.plan.arena_len {
            part.arena.resize(c.plan.arena_len, 0.0);
        }
        // Stage x and the states (weights were staged when set).
        let n = sources.len();
        part.staged.resize_with(n, Buf::new);
        for (k, src) in sources.iter().enumerate() {
            match *src {
                Source::X => stage(rows(x, p, parts), xcols, &mut part.staged[k]),
                Source::State(layer, slot) => {
                    let s = rows(state(states, (layer, slot))?, p, parts);
                    let cols = self.spec.layers[layer].units;
                    stage(s, cols, &mut part.staged[k]);
                }
                Source::Weight(_) => {}
            }
        }
        const ON_STACK: usize = 32;
        let mut small: [&[f32]; ON_STACK] = [&[]; ON_STACK];
        let mut heap: Vec<&[f32]> = Vec::new();
        for (k, src) in sources.iter().enumerate() {
            let s: &[f32] = match *src {
                Source::X | Source::State(..) => &part.staged[k],
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
        c.code.call(inputs, &mut part.arena)
    }

    /// Carries the stateful layers' final states to the next call.
    fn carry(&self, stream: &mut Stream, ran: &Ran) -> Result<()> {
        let c = &ran.compiled;
        let Stream {
            states,
            whole,
            parts,
            ..
        } = stream;
        for ((role, _), loc) in c.func.outputs.iter().zip(&c.plan.outputs) {
            if let OutputRole::State { layer, slot } = role {
                if self.spec.layers[*layer].stateful {
                    let dst = states
                        .values
                        .get_mut(&(*layer, *slot))
                        .and_then(|a| a.as_slice_mut())
                        .ok_or_else(|| Error::Internal("state not contiguous".into()))?;
                    gather_parts(whole, parts, ran, loc, dst);
                }
            }
        }
        Ok(())
    }

    /// Runs one batch in `stream`; returns the output and every recurrent layer's final states.
    fn predict_batch(&self, stream: &mut Stream, x: &ArrayD<f32>) -> Result<BatchOutput> {
        let x = x.as_standard_layout();
        let xs = x
            .as_slice()
            .ok_or_else(|| Error::Internal("input not contiguous".into()))?;
        let ran = self.execute(stream, xs, x.shape())?;
        let c = &ran.compiled;
        let mut y = None;
        let mut states = Vec::new();
        for (k, ((role, v), loc)) in c.func.outputs.iter().zip(&c.plan.outputs).enumerate() {
            let mut out = vec![0.0; loc.rows * loc.cols * ran.parts];
            stream.gather(&ran, loc, &mut out);
            // Every output's first axis is the batch's.
            let mut shape = c.func.shape(*v).to_vec();
            if let Some(rows) = shape.first_mut() {
                *rows *= ran.parts;
            }
            let a = ArrayD::from_shape_vec(IxDyn(&shape), out)
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
}
