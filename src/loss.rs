//! Keras 3's losses, with their gradients with respect to the prediction.
//!
//! Reduction is Keras's default, `sum_over_batch_size`: the per-sample loss is
//! a mean over the last axis (or a sum, for the cross-entropies), then the
//! mean over every remaining element (B, or B·T for sequence outputs). The
//! cross-entropies clip probabilities to `[1e-7, 1 - 1e-7]`, whose gradient
//! is zero outside that range, as JAX's `clip` gives it.

use crate::error::{Error, Result};
use crate::model::Loss;
use ndarray::ArrayD;

/// Keras's `backend.epsilon()`.
pub const EPSILON: f64 = 1e-7;

/// The loss of `y` against `t`, and its gradient with respect to `y`.
///
/// `t` has `y`'s shape, except for `sparse_categorical_crossentropy`, whose
/// targets are class indices shaped like `y` without its last axis (or with a
/// last axis of 1).
pub fn loss(kind: Loss, y: &ArrayD<f64>, t: &ArrayD<f64>) -> Result<(f64, ArrayD<f64>)> {
    let dense_t = dense_targets(kind, y.shape(), t)?;
    let c = *y.shape().last().unwrap_or(&1);
    let rows = y.len() / c.max(1);
    let y = y.as_standard_layout();
    let ys = y.as_slice().expect("standard layout");
    let ts = dense_t.as_slice().expect("standard layout");
    let mut grad = vec![0.0; ys.len()];
    let mut total = 0.0;
    let n = rows as f64;
    for r in 0..rows {
        total += row(
            kind,
            &ys[r * c..(r + 1) * c],
            &ts[r * c..(r + 1) * c],
            &mut grad[r * c..(r + 1) * c],
            n,
        );
    }
    let grad = ArrayD::from_shape_vec(y.raw_dim(), grad).expect("sizes agree");
    Ok((total / n, grad))
}

/// The targets `t` for a prediction shaped `y_shape`, checked and dense (standard layout):
/// sparse class indices become one-hot rows; dense targets in standard layout are
/// borrowed as they are (a training step of batch 1 stages them at every call).
pub fn dense_targets<'t>(
    kind: Loss,
    y_shape: &[usize],
    t: &'t ArrayD<f64>,
) -> Result<std::borrow::Cow<'t, ArrayD<f64>>> {
    let c = *y_shape
        .last()
        .ok_or_else(|| Error::Data("the prediction has no axes".into()))?;
    let rows = y_shape.iter().product::<usize>() / c.max(1);
    Ok(match kind {
        Loss::SparseCategoricalCrossentropy => {
            let lead = &y_shape[..y_shape.len() - 1];
            let ok = t.shape() == lead || (t.shape().split_last() == Some((&1, lead)));
            if !ok || t.len() != rows {
                return Err(Error::Data(format!(
                    "sparse targets must be class indices shaped {lead:?}; got {:?}",
                    t.shape()
                )));
            }
            let mut one_hot = ArrayD::zeros(ndarray::IxDyn(y_shape));
            for (r, &cls) in t.iter().enumerate() {
                if cls < 0.0 || cls.fract() != 0.0 || cls as usize >= c {
                    return Err(Error::Data(format!(
                        "target {cls} at sample {r} is not a class of 0..{c}"
                    )));
                }
                one_hot.as_slice_mut().expect("fresh arrays are contiguous")
                    [r * c + cls as usize] = 1.0;
            }
            std::borrow::Cow::Owned(one_hot)
        }
        _ => {
            if t.shape() != y_shape {
                return Err(Error::Data(format!(
                    "targets are shaped {:?}, the prediction {:?}",
                    t.shape(),
                    y_shape
                )));
            }
            if t.is_standard_layout() {
                std::borrow::Cow::Borrowed(t)
            } else {
                std::borrow::Cow::Owned(t.as_standard_layout().into_owned())
            }
        }
    })
}

/// One row's loss (before the mean over rows) and its gradient `gr` with respect to
/// `yr`, for a batch of `n` rows in all: the formulas of [`loss`], shared with the
/// generated training step's host kernel. Sparse targets arrive one-hot here.
pub fn row(kind: Loss, yr: &[f64], tr: &[f64], gr: &mut [f64], n: f64) -> f64 {
    let c = yr.len();
    match kind {
        Loss::Mse => {
            for j in 0..c {
                gr[j] = 2.0 * (yr[j] - tr[j]) / (n * c as f64);
            }
            yr.iter()
                .zip(tr)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                / c as f64
        }
        Loss::Mae => {
            for j in 0..c {
                let d = yr[j] - tr[j];
                gr[j] = if d > 0.0 {
                    1.0
                } else if d < 0.0 {
                    -1.0
                } else {
                    0.0
                } / (n * c as f64);
            }
            yr.iter().zip(tr).map(|(a, b)| (a - b).abs()).sum::<f64>() / c as f64
        }
        Loss::CategoricalCrossentropy | Loss::SparseCategoricalCrossentropy => {
            // p = y / sum(y); p = clip(p); loss = -sum(t log p).
            // The gradient with respect to p goes into `gr` first.
            let s: f64 = yr.iter().sum();
            let mut l = 0.0;
            for j in 0..c {
                let p = yr[j] / s;
                let pc = p.clamp(EPSILON, 1.0 - EPSILON);
                // A zero target's term is a zero (the clipped logarithm is finite): one-hot
                // targets need one logarithm per row, not one per class.
                if tr[j] != 0.0 {
                    l -= tr[j] * pc.ln();
                }
                gr[j] = if p > EPSILON && p < 1.0 - EPSILON {
                    -tr[j] / pc / n
                } else {
                    0.0
                };
            }
            // Through the normalization: d/dy_k = (dp_k - sum_j dp_j p_j) / s.
            let dot: f64 = (0..c).map(|j| gr[j] * yr[j] / s).sum();
            for g in gr.iter_mut() {
                *g = (*g - dot) / s;
            }
            l
        }
        Loss::BinaryCrossentropy => {
            let mut l = 0.0;
            for j in 0..c {
                let p = yr[j].clamp(EPSILON, 1.0 - EPSILON);
                l -= tr[j] * p.ln() + (1.0 - tr[j]) * (1.0 - p).ln();
                if yr[j] > EPSILON && yr[j] < 1.0 - EPSILON {
                    gr[j] = -(tr[j] / p - (1.0 - tr[j]) / (1.0 - p)) / (n * c as f64);
                }
            }
            l / c as f64
        }
    }
}
