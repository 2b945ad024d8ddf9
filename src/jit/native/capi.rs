//! The C ABI: `include/lstmc.h` (generated from this file by cbindgen; a test keeps
//! the two in sync).
//!
//! Every function returns an [`lstmc_status`]; on failure it stores a message in
//! `*error` (when `error` is not NULL), which the caller frees with
//! [`lstmc_string_free`]. Handles are opaque and freed by their `_free` function.
//! Every pointer is checked for NULL and every length against the shapes; no panic
//! crosses the boundary (one becomes `LSTMC_PANIC`).
//!
//! Threads: a `lstmc_network` is used by one thread at a time. Streams
//! ([`lstmc_stream_new`]) hold their own copy of the compiled code's handle, the
//! weights of when they were made and their own states: different streams may
//! predict on different threads at once.
//!
//! This is part of the one module with `unsafe` code: here the C caller's pointers
//! become slices, after the checks.

#![allow(non_camel_case_types)]

use crate::api::{CompileOptions, Model, Network};
use crate::error::Error;
use crate::runtime::{Predictor, Stream};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a call did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum lstmc_status {
    /// Success.
    LSTMC_OK = 0,
    /// The model source has errors (the message shows them with line and column).
    LSTMC_MODEL_ERROR = 1,
    /// A weights file does not fit the model.
    LSTMC_WEIGHTS_ERROR = 2,
    /// Input data is unusable (NaN, wrong targets).
    LSTMC_DATA_ERROR = 3,
    /// A call does not fit the model: shapes, lengths, batch size, NULL pointers.
    LSTMC_USAGE_ERROR = 4,
    /// A file could not be read or written.
    LSTMC_IO_ERROR = 5,
    /// A bug in lstmc.
    LSTMC_INTERNAL_ERROR = 6,
    /// lstmc panicked (a bug); the handle involved should be freed.
    LSTMC_PANIC = 7,
}

/// A compiled model with its weights, optimizer and states.
pub struct lstmc_network {
    net: Network,
}

/// One stream of batches (a sequence) with its own states, usable on its own thread.
pub struct lstmc_stream {
    predictor: Predictor,
    stream: Stream,
}

fn status_of(e: &Error) -> lstmc_status {
    match e {
        Error::Model(_) => lstmc_status::LSTMC_MODEL_ERROR,
        Error::Weights(_) => lstmc_status::LSTMC_WEIGHTS_ERROR,
        Error::Data(_) => lstmc_status::LSTMC_DATA_ERROR,
        Error::Usage(_) => lstmc_status::LSTMC_USAGE_ERROR,
        Error::Io { .. } => lstmc_status::LSTMC_IO_ERROR,
        Error::Internal(_) => lstmc_status::LSTMC_INTERNAL_ERROR,
    }
}

/// Stores `msg` for the caller (who frees it with `lstmc_string_free`).
fn set_error(error: *mut *mut c_char, msg: &str) {
    if error.is_null() {
        return;
    }
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // SAFETY: `error` is non-null and, by the API contract, points to a writable `char *`.
    unsafe { *error = c.into_raw() };
}

/// Runs `body`, turning its error or panic into a status and a message.
fn guard(error: *mut *mut c_char, body: impl FnOnce() -> Result<(), Error>) -> lstmc_status {
    if !error.is_null() {
        // SAFETY: as in `set_error`.
        unsafe { *error = std::ptr::null_mut() };
    }
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => lstmc_status::LSTMC_OK,
        Ok(Err(e)) => {
            set_error(error, &e.to_string());
            status_of(&e)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            set_error(error, &format!("internal error: lstmc panicked: {what}"));
            lstmc_status::LSTMC_PANIC
        }
    }
}

fn null(what: &str) -> Error {
    Error::Usage(format!("{what} is NULL"))
}

/// The shape at `shape[..ndim]`.
fn shape_of(shape: *const usize, ndim: usize, what: &str) -> Result<Vec<usize>, Error> {
    if shape.is_null() {
        return Err(null(what));
    }
    if ndim == 0 || ndim > 3 {
        return Err(Error::Usage(format!(
            "{what} has {ndim} axes; lstmc arrays have 1 to 3"
        )));
    }
    // SAFETY: non-null, and the caller promises `ndim` readable elements.
    Ok(unsafe { std::slice::from_raw_parts(shape, ndim) }.to_vec())
}

/// The array at `data[..len]` of `shape`, after checking that the lengths agree.
fn array_of<'a>(
    data: *const f32,
    len: usize,
    shape: &[usize],
    what: &str,
) -> Result<ArrayViewD<'a, f32>, Error> {
    if data.is_null() {
        return Err(null(what));
    }
    let want = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::Usage(format!("{what}: shape {shape:?} overflows")))?;
    if len != want {
        return Err(Error::Usage(format!(
            "{what} has {len} elements, but its shape {shape:?} has {want}"
        )));
    }
    // SAFETY: non-null, and the caller promises `len` readable floats that stay valid
    // and unmodified for the call.
    let s = unsafe { std::slice::from_raw_parts(data, len) };
    ArrayViewD::from_shape(IxDyn(shape), s).map_err(|e| Error::Usage(format!("{what}: {e}")))
}

/// An array passed as data, length, shape and axes.
type Raw = (*const f32, usize, *const usize, usize);

/// The inputs `x` and targets `y` of a training step or an evaluation, checked.
fn inputs_and_targets<'a>(
    (x, x_len, x_shape, x_ndim): Raw,
    (y, y_len, y_shape, y_ndim): Raw,
) -> Result<(ArrayViewD<'a, f32>, ArrayViewD<'a, f32>), Error> {
    let xshape = shape_of(x_shape, x_ndim, "x_shape")?;
    let yshape = shape_of(y_shape, y_ndim, "y_shape")?;
    Ok((
        array_of(x, x_len, &xshape, "x")?,
        array_of(y, y_len, &yshape, "y")?,
    ))
}

/// Stores a loss in `*loss` and a metric in `*metric` (NaN for none), each only where
/// the pointer is not NULL.
fn write_scores((l, m): (f64, Option<f64>), loss: *mut f64, metric: *mut f64) {
    // SAFETY: each is written only when non-null; the caller promises writable doubles.
    unsafe {
        if let Some(p) = loss.as_mut() {
            *p = l;
        }
        if let Some(p) = metric.as_mut() {
            *p = m.unwrap_or(f64::NAN);
        }
    }
}

/// Copies `y` into the caller's `out[..len]`, which must have exactly its size.
fn write_out(y: &ArrayD<f32>, out: *mut f32, len: usize) -> Result<(), Error> {
    if out.is_null() {
        return Err(null("y"));
    }
    if len != y.len() {
        return Err(Error::Usage(format!(
            "the output is shaped {:?} ({} elements), but y has room for {len}",
            y.shape(),
            y.len()
        )));
    }
    // SAFETY: non-null, and the caller promises `len` writable floats.
    let dst = unsafe { std::slice::from_raw_parts_mut(out, len) };
    for (d, &v) in dst.iter_mut().zip(y.iter()) {
        *d = v;
    }
    Ok(())
}

fn string_of(s: *const c_char, what: &str) -> Result<String, Error> {
    if s.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-null, and the caller promises a NUL-terminated string.
    let c = unsafe { CStr::from_ptr(s) };
    c.to_str()
        .map(str::to_owned)
        .map_err(|_| Error::Usage(format!("{what} is not UTF-8")))
}

fn network<'a>(net: *mut lstmc_network) -> Result<&'a mut Network, Error> {
    // SAFETY: a non-null handle comes from `lstmc_compile*` and is not freed yet; the
    // caller uses it from one thread at a time (the API contract).
    unsafe { net.as_mut() }
        .map(|n| &mut n.net)
        .ok_or_else(|| null("network"))
}

fn finish(
    model: Result<Model, Error>,
    seed: u64,
    out: *mut *mut lstmc_network,
) -> Result<(), Error> {
    if out.is_null() {
        return Err(null("out"));
    }
    let net = model?.compile(&CompileOptions {
        seed,
        ..Default::default()
    })?;
    // SAFETY: `out` is non-null and points to a writable handle pointer.
    unsafe { *out = Box::into_raw(Box::new(lstmc_network { net })) };
    Ok(())
}

/// Parses, checks and compiles `.model` source text (`source_len` bytes, UTF-8) with
/// weights initialized from `seed`; on success `*out` is the new network.
#[no_mangle]
pub extern "C" fn lstmc_compile(
    source: *const c_char,
    source_len: usize,
    seed: u64,
    out: *mut *mut lstmc_network,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        if source.is_null() {
            return Err(null("source"));
        }
        // SAFETY: non-null, and the caller promises `source_len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(source.cast::<u8>(), source_len) };
        let text = std::str::from_utf8(bytes)
            .map_err(|e| Error::Usage(format!("the model source is not UTF-8: {e}")))?;
        finish(Model::parse(text), seed, out)
    })
}

/// Reads, checks and compiles the `.model` file at `path`.
#[no_mangle]
pub extern "C" fn lstmc_compile_file(
    path: *const c_char,
    seed: u64,
    out: *mut *mut lstmc_network,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        let path = string_of(path, "path")?;
        finish(Model::from_file(path), seed, out)
    })
}

/// Frees a network (NULL is allowed). Streams made from it stay usable.
#[no_mangle]
pub extern "C" fn lstmc_network_free(net: *mut lstmc_network) {
    if !net.is_null() {
        // SAFETY: the handle came from `Box::into_raw` in `finish` and is freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(net) })));
    }
}

/// The input shape the model expects, `[batch, time, features]` (or `[batch, features]`
/// for a model without a time axis), stored in `shape[..3]`, its axis count in `*ndim`.
/// Sizes the model leaves open are 0 (any batch size or length fits).
#[no_mangle]
pub extern "C" fn lstmc_input_shape(
    net: *mut lstmc_network,
    shape: *mut usize,
    ndim: *mut usize,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        let spec = network(net)?.spec();
        if shape.is_null() || ndim.is_null() {
            return Err(null("shape or ndim"));
        }
        let batch = spec.input.batch.unwrap_or(0);
        let s: Vec<usize> = if spec.input.sequence {
            vec![batch, spec.input.time.unwrap_or(0), spec.input.features]
        } else {
            vec![batch, spec.input.features]
        };
        // SAFETY: non-null; the caller promises room for 3 sizes and one count.
        unsafe {
            std::slice::from_raw_parts_mut(shape, s.len()).copy_from_slice(&s);
            *ndim = s.len();
        }
        Ok(())
    })
}

/// The shape of the output for an input of shape `x_shape[..x_ndim]`: stored in
/// `out_shape[..3]`, its axis count in `*out_ndim`.
#[no_mangle]
pub extern "C" fn lstmc_output_shape(
    net: *mut lstmc_network,
    x_shape: *const usize,
    x_ndim: usize,
    out_shape: *mut usize,
    out_ndim: *mut usize,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        let net = network(net)?;
        let shape = shape_of(x_shape, x_ndim, "x_shape")?;
        if out_shape.is_null() || out_ndim.is_null() {
            return Err(null("out_shape or out_ndim"));
        }
        let spec = net.spec();
        let sizes = crate::reference::batch_shapes(spec, &shape)?;
        let last = spec.layers.last().map_or(spec.input.features, |l| l.units);
        let y: Vec<usize> = if spec.output_is_sequence() {
            vec![sizes.batch, sizes.time, last]
        } else {
            vec![sizes.batch, last]
        };
        // SAFETY: non-null; the caller promises room for 3 sizes and one count.
        unsafe {
            std::slice::from_raw_parts_mut(out_shape, y.len()).copy_from_slice(&y);
            *out_ndim = y.len();
        }
        Ok(())
    })
}

/// Predicts one batch `x` (`x_len` floats, row-major, shape `x_shape[..x_ndim]`) into
/// `y` (`y_len` floats, exactly the output's size). Stateful layers carry the network's
/// states from call to call, as Keras's `predict` does.
#[no_mangle]
pub extern "C" fn lstmc_predict(
    net: *mut lstmc_network,
    x: *const f32,
    x_len: usize,
    x_shape: *const usize,
    x_ndim: usize,
    y: *mut f32,
    y_len: usize,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        let net = network(net)?;
        let shape = shape_of(x_shape, x_ndim, "x_shape")?;
        let xs = array_of(x, x_len, &shape, "x")?;
        let out = net.predict(xs)?;
        write_out(&out, y, y_len)
    })
}

/// One optimizer step on a batch (Keras's `train_on_batch`): `x` as in
/// [`lstmc_predict`], targets `y` of shape `y_shape[..y_ndim]`. Stores the loss before
/// the step in `*loss` and, in `*metric`, the value for the batch of the metric the
/// model's `compile` line names (`metrics=`), NaN when it names none (either pointer may
/// be NULL).
#[no_mangle]
pub extern "C" fn lstmc_train_on_batch(
    net: *mut lstmc_network,
    x: *const f32,
    x_len: usize,
    x_shape: *const usize,
    x_ndim: usize,
    y: *const f32,
    y_len: usize,
    y_shape: *const usize,
    y_ndim: usize,
    loss: *mut f64,
    metric: *mut f64,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        let net = network(net)?;
        let (xs, ys) =
            inputs_and_targets((x, x_len, x_shape, x_ndim), (y, y_len, y_shape, y_ndim))?;
        write_scores(net.train_on_batch(xs, ys)?, loss, metric);
        Ok(())
    })
}

/// Loss and metric over `x` and targets `y` (shapes as in [`lstmc_train_on_batch`]) in
/// batches of `batch_size`, without updates (Keras's `evaluate`); stateful layers carry
/// their states across the batches. Stores the loss in `*loss` and the metric the
/// model's `compile` line names in `*metric`, NaN when it names none (either may be
/// NULL).
#[no_mangle]
pub extern "C" fn lstmc_evaluate(
    net: *mut lstmc_network,
    x: *const f32,
    x_len: usize,
    x_shape: *const usize,
    x_ndim: usize,
    y: *const f32,
    y_len: usize,
    y_shape: *const usize,
    y_ndim: usize,
    batch_size: usize,
    loss: *mut f64,
    metric: *mut f64,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        let net = network(net)?;
        let (xs, ys) =
            inputs_and_targets((x, x_len, x_shape, x_ndim), (y, y_len, y_shape, y_ndim))?;
        write_scores(net.evaluate(xs, ys, batch_size)?, loss, metric);
        Ok(())
    })
}

/// One epoch of [`lstmc_fit`], as Keras's logs have it; NaN where they have no value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct lstmc_epoch {
    /// The training loss, averaged over the epoch's samples.
    pub loss: f64,
    /// The `compile` line's metric (`metrics=`) over the epoch's samples; NaN without one.
    pub metric: f64,
    /// The loss on the validation samples; NaN without a validation split.
    pub val_loss: f64,
    /// The metric on the validation samples; NaN without a split or a metric.
    pub val_metric: f64,
}

/// Keras's `fit` on `x` and targets `y` (shapes as in [`lstmc_train_on_batch`]), as the
/// model's `fit` line says (epochs, batch size, shuffling and its seed, validation
/// split, state resets; Keras's defaults where it is silent), with `epochs` and
/// `batch_size` in place of the line's when not 0. When `history` is not NULL, epoch `i`
/// (from 0) is stored in `history[i]` as it ends, and `history_len` must cover every
/// epoch (checked before training). `*epochs_done` (when not NULL) is how many epochs
/// ended, also when a later one fails: a loss that diverges stops training with
/// `LSTMC_DATA_ERROR` and keeps the weights of the last epoch that ended.
#[no_mangle]
pub extern "C" fn lstmc_fit(
    net: *mut lstmc_network,
    x: *const f32,
    x_len: usize,
    x_shape: *const usize,
    x_ndim: usize,
    y: *const f32,
    y_len: usize,
    y_shape: *const usize,
    y_ndim: usize,
    epochs: usize,
    batch_size: usize,
    history: *mut lstmc_epoch,
    history_len: usize,
    epochs_done: *mut usize,
    error: *mut *mut c_char,
) -> lstmc_status {
    // SAFETY: written only when non-null; the caller promises a writable `size_t`.
    let report = |n: usize| unsafe {
        if let Some(p) = epochs_done.as_mut() {
            *p = n;
        }
    };
    report(0);
    guard(error, || {
        let net = network(net)?;
        let (xs, ys) =
            inputs_and_targets((x, x_len, x_shape, x_ndim), (y, y_len, y_shape, y_ndim))?;
        let mut options = net.fit_options();
        if epochs > 0 {
            options.epochs = epochs;
        }
        if batch_size > 0 {
            options.batch_size = batch_size;
        }
        let mut history = if history.is_null() {
            None
        } else if history_len < options.epochs {
            return Err(Error::Usage(format!(
                "history has room for {history_len} epochs, but fit runs {}",
                options.epochs
            )));
        } else {
            // SAFETY: non-null, and the caller promises `history_len` writable entries,
            // which cover every epoch (checked above).
            Some(unsafe { std::slice::from_raw_parts_mut(history, history_len) })
        };
        let mut done = 0;
        net.fit_with(xs, ys, &options, |log| {
            if let Some(slot) = history.as_deref_mut().and_then(|h| h.get_mut(done)) {
                let (val_loss, val_metric) = log.validation.unwrap_or((f64::NAN, None));
                *slot = lstmc_epoch {
                    loss: log.loss,
                    metric: log.metric.unwrap_or(f64::NAN),
                    val_loss,
                    val_metric: val_metric.unwrap_or(f64::NAN),
                };
            }
            done += 1;
            report(done);
        })?;
        Ok(())
    })
}

/// Zeroes the network's stateful layers' states (Keras's `reset_states`).
#[no_mangle]
pub extern "C" fn lstmc_reset_states(
    net: *mut lstmc_network,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        network(net)?.reset_states();
        Ok(())
    })
}

/// Loads weights (safetensors, Keras's names) into the network.
#[no_mangle]
pub extern "C" fn lstmc_load_weights(
    net: *mut lstmc_network,
    path: *const c_char,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        let net = network(net)?;
        net.load_weights(string_of(path, "path")?)
    })
}

/// Saves the network's weights as safetensors, atomically.
#[no_mangle]
pub extern "C" fn lstmc_save_weights(
    net: *mut lstmc_network,
    path: *const c_char,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        let net = network(net)?;
        net.save_weights(string_of(path, "path")?)
    })
}

/// A new stream of the network as it is now (weights and compiled code), with zero
/// states; usable on another thread than the network's.
#[no_mangle]
pub extern "C" fn lstmc_stream_new(
    net: *mut lstmc_network,
    out: *mut *mut lstmc_stream,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        let net = network(net)?;
        if out.is_null() {
            return Err(null("out"));
        }
        let predictor = net.predictor();
        let stream = predictor.stream();
        // SAFETY: `out` is non-null and points to a writable handle pointer.
        unsafe { *out = Box::into_raw(Box::new(lstmc_stream { predictor, stream })) };
        Ok(())
    })
}

/// Predicts one batch on a stream (arguments as [`lstmc_predict`]): stateful layers
/// start from the stream's states and keep the new ones.
#[no_mangle]
pub extern "C" fn lstmc_stream_predict(
    stream: *mut lstmc_stream,
    x: *const f32,
    x_len: usize,
    x_shape: *const usize,
    x_ndim: usize,
    y: *mut f32,
    y_len: usize,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        // SAFETY: a non-null handle comes from `lstmc_stream_new` and is not freed yet;
        // each stream is used by one thread at a time (the API contract).
        let s = unsafe { stream.as_mut() }.ok_or_else(|| null("stream"))?;
        let shape = shape_of(x_shape, x_ndim, "x_shape")?;
        let xs = array_of(x, x_len, &shape, "x")?.to_owned();
        let out = s.predictor.predict_stream(&mut s.stream, &xs)?;
        write_out(&out.y, y, y_len)
    })
}

/// Zeroes a stream's states.
#[no_mangle]
pub extern "C" fn lstmc_stream_reset(
    stream: *mut lstmc_stream,
    error: *mut *mut c_char,
) -> lstmc_status {
    guard(error, || {
        // SAFETY: as in `lstmc_stream_predict`.
        let s = unsafe { stream.as_mut() }.ok_or_else(|| null("stream"))?;
        s.stream.reset_states();
        Ok(())
    })
}

/// Frees a stream (NULL is allowed).
#[no_mangle]
pub extern "C" fn lstmc_stream_free(stream: *mut lstmc_stream) {
    if !stream.is_null() {
        // SAFETY: the handle came from `Box::into_raw` in `lstmc_stream_new`, freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(stream) })));
    }
}

/// Frees a message stored by a failing call (NULL is allowed).
#[no_mangle]
pub extern "C" fn lstmc_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: every message comes from `CString::into_raw` in `set_error`, freed once.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// The library's version, a static NUL-terminated string (not to be freed).
#[no_mangle]
pub extern "C" fn lstmc_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
