//! Training data: the data sets built into lstmc, NumPy arrays and CSV files,
//! checked against the model before any training starts.
//!
//! The built-in `butterfly` set is the Keras LSTM tutorial's nursery rhyme:
//! 54 notes, coded `c4..b4 = 0..6` and `c8..b8 = 7..13` (a note name and a
//! length, 4 or 8), cut into windows of 4 notes whose next note is the label,
//! one-hot over 12 classes.

use crate::error::{Error, Result};
use crate::model::{DataSource, ModelSpec};
use ndarray::{Array2, ArrayD, IxDyn};
use std::path::Path;

/// The tutorial's song, as written there.
pub const BUTTERFLY: [&str; 54] = [
    "g8", "e8", "e4", "f8", "d8", "d4", "c8", "d8", "e8", "f8", "g8", "g8", "g4", //
    "g8", "e8", "e8", "e8", "f8", "d8", "d4", "c8", "e8", "g8", "g8", "e8", "e8", "e4", //
    "d8", "d8", "d8", "d8", "d8", "e8", "f4", "e8", "e8", "e8", "e8", "e8", "f8", "g4", //
    "g8", "e8", "e4", "f8", "d8", "d4", "c8", "e8", "g8", "g8", "e8", "e8", "e4",
];

/// Classes of the tutorial's one-hot labels.
pub const BUTTERFLY_CLASSES: usize = 12;

/// The tutorial's code of a note: `c4..b4 = 0..6`, `c8..b8 = 7..13`.
pub fn note_code(note: &str) -> Option<usize> {
    let mut chars = note.chars();
    let scale = "cdefgab".find(chars.next()?)?;
    let length = match chars.as_str() {
        "4" => 0,
        "8" => 7,
        _ => return None,
    };
    Some(scale + length)
}

/// The note name of a code (the inverse of [`note_code`]).
pub fn note_name(code: usize) -> Option<String> {
    let scale = "cdefgab".chars().nth(code % 7)?;
    (code < 14).then(|| format!("{scale}{}", if code < 7 { 4 } else { 8 }))
}

/// One note as model input: `[code / 13]`, or `[scale / 6, length]` with 4 -> 0, 8 -> 1.
pub fn encode_note(code: usize, features: usize) -> Vec<f64> {
    if features == 1 {
        vec![code as f64 / 13.0]
    } else {
        vec![(code % 7) as f64 / 6.0, if code >= 7 { 1.0 } else { 0.0 }]
    }
}

/// A data set: inputs and targets, as float arrays.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `(N, T, F)` or `(N, F)`.
    pub x: ArrayD<f64>,
    /// `(N, C)` or `(N, T, C)`; `None` for inputs to predict.
    pub y: Option<ArrayD<f64>>,
}

/// The built-in song, cut into windows of `window` notes with the next note as
/// a one-hot label: `x` of shape `(N, window, features)`, `y` of `(N, 12)`.
pub fn butterfly(window: usize, features: usize) -> Result<Dataset> {
    if !(1..=2).contains(&features) {
        return Err(Error::Data(format!(
            "the butterfly song has 1 or 2 features, not {features}"
        )));
    }
    if window == 0 || window >= BUTTERFLY.len() {
        return Err(Error::Data(format!(
            "a window of {window} notes does not fit the 54-note song"
        )));
    }
    let codes: Vec<usize> = BUTTERFLY
        .iter()
        .map(|n| note_code(n).expect("the song is well formed"))
        .collect();
    let n = codes.len() - window;
    let mut x = Vec::with_capacity(n * window * features);
    let mut y = vec![0.0; n * BUTTERFLY_CLASSES];
    for i in 0..n {
        for &c in &codes[i..i + window] {
            x.extend(encode_note(c, features));
        }
        y[i * BUTTERFLY_CLASSES + codes[i + window]] = 1.0;
    }
    Ok(Dataset {
        x: ArrayD::from_shape_vec(IxDyn(&[n, window, features]), x).expect("sizes agree"),
        y: Some(ArrayD::from_shape_vec(IxDyn(&[n, BUTTERFLY_CLASSES]), y).expect("sizes agree")),
    })
}

/// Reads a CSV file of numbers. With `window`, the file is one series cut into
/// sliding windows of `window` time steps, each with the next step as its target:
/// a row per time step with a column per feature, `x (N, window, F)`, `y (N, F)`,
/// or a single row of values, one feature. Without, each row is a sample: the
/// model's `T·F` inputs followed by its output's targets.
pub fn csv(path: &Path, window: Option<usize>, header: bool, spec: &ModelSpec) -> Result<Dataset> {
    let what = path.display().to_string();
    let text = String::from_utf8(crate::files::read(path)?)
        .map_err(|e| Error::Data(format!("{what}: not UTF-8 text ({e})")))?;
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for (i, line) in text.lines().enumerate().skip(usize::from(header)) {
        if line.trim().is_empty() {
            continue;
        }
        let row = line
            .split(',')
            .enumerate()
            .map(|(j, cell)| {
                let cell = cell.trim();
                let v: f64 = cell.parse().map_err(|_| {
                    Error::Data(format!(
                        "{what}:{}:{}: `{cell}` is not a number",
                        i + 1,
                        j + 1
                    ))
                })?;
                if v.is_finite() {
                    Ok(v)
                } else {
                    Err(Error::Data(format!(
                        "{what}:{}:{}: {cell} is not finite; data must be finite",
                        i + 1,
                        j + 1
                    )))
                }
            })
            .collect::<Result<Vec<f64>>>()?;
        if let Some(first) = rows.first() {
            if first.len() != row.len() {
                return Err(Error::Data(format!(
                    "{what}:{}: {} values, but the first row has {}",
                    i + 1,
                    row.len(),
                    first.len()
                )));
            }
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(Error::Data(format!("{what} holds no data")));
    }
    match window {
        Some(w) => {
            // One row of values is a series of one feature; otherwise each row is a
            // time step and each column a feature.
            let (series, features) = if rows.len() == 1 {
                (rows.remove(0).into_iter().map(|v| vec![v]).collect(), 1)
            } else {
                let f = rows[0].len();
                (rows, f)
            };
            if series.len() <= w {
                return Err(Error::Data(format!(
                    "{what}: {} time steps are too few for windows of {w}",
                    series.len()
                )));
            }
            let n = series.len() - w;
            // Windows overlap: `n · w · features` values from `(n + w) · features`,
            // refused up front when the machine cannot hold them.
            let bytes = (n as u64)
                .checked_mul(w as u64)
                .and_then(|v| v.checked_mul(features as u64))
                .and_then(|v| v.checked_mul(8))
                .unwrap_or(u64::MAX);
            crate::files::check_fits(
                bytes,
                &format!("{what}: cutting it into {n} windows of {w} time steps"),
            )?;
            let x: Vec<f64> = (0..n)
                .flat_map(|i| series[i..i + w].iter().flatten().copied())
                .collect();
            let y: Vec<f64> = series[w..].iter().flatten().copied().collect();
            Ok(Dataset {
                x: ArrayD::from_shape_vec(IxDyn(&[n, w, features]), x).expect("sizes agree"),
                y: Some(ArrayD::from_shape_vec(IxDyn(&[n, features]), y).expect("sizes agree")),
            })
        }
        None => {
            let inputs = spec.input.features
                * if spec.input.sequence {
                    spec.input.time.unwrap_or(0)
                } else {
                    1
                };
            if spec.input.sequence && spec.input.time.is_none() {
                return Err(Error::Data(format!(
                    "{what}: rows of samples need the model's input_length to split inputs from targets"
                )));
            }
            let outputs = spec.layers.last().map_or(0, |l| l.units);
            let want = inputs + outputs;
            if rows[0].len() != want {
                return Err(Error::Data(format!(
                    "{what}: each row must hold {inputs} inputs and {outputs} targets ({want} values); it has {}",
                    rows[0].len()
                )));
            }
            let n = rows.len();
            let m = Array2::from_shape_vec((n, want), rows.concat()).expect("rows are equal");
            let x: Vec<f64> = m
                .rows()
                .into_iter()
                .flat_map(|r| r.to_vec()[..inputs].to_vec())
                .collect();
            let y: Vec<f64> = m
                .rows()
                .into_iter()
                .flat_map(|r| r.to_vec()[inputs..].to_vec())
                .collect();
            let xshape = if spec.input.sequence {
                vec![n, spec.input.time.unwrap_or(1), spec.input.features]
            } else {
                vec![n, spec.input.features]
            };
            Ok(Dataset {
                x: ArrayD::from_shape_vec(IxDyn(&xshape), x).expect("sizes agree"),
                y: Some(ArrayD::from_shape_vec(IxDyn(&[n, outputs]), y).expect("sizes agree")),
            })
        }
    }
}

/// Loads the data a model's `data` statement names (paths relative to `base`),
/// and checks it against the model.
pub fn load(spec: &ModelSpec, base: &Path) -> Result<Option<Dataset>> {
    let Some(data) = &spec.data else {
        return Ok(None);
    };
    let set = match &data.source {
        DataSource::Builtin {
            window, features, ..
        } => {
            let mut set = butterfly(*window, *features)?;
            // A model without a time axis (the tutorial's MLP) takes a window as one row.
            if !spec.input.sequence {
                let n = set.x.shape()[0];
                set.x = set
                    .x
                    .into_shape_with_order(IxDyn(&[n, window * features]))
                    .map_err(|e| Error::Internal(e.to_string()))?;
            }
            set
        }
        DataSource::Npy { x, .. } if x.is_empty() => return Ok(None),
        DataSource::Npy { x, y } => Dataset {
            x: crate::arrays::read(&base.join(x), Some("x"))?,
            y: y.as_ref()
                .map(|y| crate::arrays::read(&base.join(y), Some("y")))
                .transpose()?,
        },
        DataSource::Csv {
            path,
            window,
            header,
        } => csv(&base.join(path), *window, *header, spec)?,
    };
    check(spec, &set)?;
    Ok(Some(set))
}

/// Checks that a data set fits the model: input features and steps, sample
/// counts of x and y, the targets' width, and at least one sample.
pub fn check(spec: &ModelSpec, set: &Dataset) -> Result<()> {
    let xs = set.x.shape();
    let n = *xs.first().unwrap_or(&0);
    if n == 0 {
        return Err(Error::Data("the data set is empty (0 samples)".into()));
    }
    crate::reference::batch_shapes(spec, xs)
        .map_err(|e| Error::Data(format!("training inputs: {e}")))?;
    if let Some(y) = &set.y {
        let ys = y.shape();
        if ys.first() != Some(&n) {
            return Err(Error::Data(format!(
                "x has {n} samples but y has {}",
                ys.first().unwrap_or(&0)
            )));
        }
        let units = spec.layers.last().map_or(0, |l| l.units);
        let want_seq = spec.output_is_sequence();
        let ok = match (want_seq, ys) {
            (false, &[_, c]) => c == units,
            (true, &[_, t, c]) => c == units && Some(t) == xs.get(1).copied(),
            _ => false,
        };
        if !ok {
            let want = if want_seq {
                format!("(N, {}, {units})", xs.get(1).copied().unwrap_or(0))
            } else {
                format!("(N, {units})")
            };
            return Err(Error::Data(format!(
                "targets are shaped {ys:?}, but the model's output is {want}"
            )));
        }
    }
    Ok(())
}
