//! Keras 3's optimizers, as its `update_step`s are written (see the shared
//! FIXTURES.md for Adam): the reference the generated updates will be tested
//! against. Slots (momentum, first and second moments) start at zero, the
//! iteration count at 0, so the first Adam step uses `t = 1`.

use crate::error::{Error, Result};
use crate::model::Optimizer;
use ndarray::ArrayD;

/// An optimizer with its per-weight slots.
#[derive(Clone, Debug)]
pub struct OptimizerState {
    /// The rule and its hyper-parameters.
    pub kind: Optimizer,
    /// Steps taken.
    pub iterations: u64,
    /// Per weight: first slot (momentum, Adam's m, RMSprop's velocity).
    first: Vec<ArrayD<f64>>,
    /// Per weight: second slot (Adam's v, RMSprop's momentum).
    second: Vec<ArrayD<f64>>,
}

impl OptimizerState {
    /// Fresh state for weights of these shapes.
    pub fn new(kind: Optimizer, shapes: &[&[usize]]) -> OptimizerState {
        let zeros = || {
            shapes
                .iter()
                .map(|s| ArrayD::zeros(ndarray::IxDyn(s)))
                .collect::<Vec<_>>()
        };
        OptimizerState {
            kind,
            iterations: 0,
            first: zeros(),
            second: zeros(),
        }
    }

    /// One update of every weight by its gradient.
    pub fn step(&mut self, weights: &mut [&mut ArrayD<f64>], grads: &[&ArrayD<f64>]) -> Result<()> {
        if weights.len() != self.first.len() || grads.len() != weights.len() {
            return Err(Error::Internal(format!(
                "optimizer has {} slots, given {} weights and {} gradients",
                self.first.len(),
                weights.len(),
                grads.len()
            )));
        }
        let rate = self.kind.step_rate(self.iterations + 1);
        for (i, (w, g)) in weights.iter_mut().zip(grads).enumerate() {
            if w.shape() != g.shape() {
                return Err(Error::Internal(format!(
                    "gradient {i} is {:?}, weight {:?}",
                    g.shape(),
                    w.shape()
                )));
            }
            let (Some(w), Some(g), Some(s1), Some(s2)) = (
                w.as_slice_mut(),
                g.as_slice(),
                self.first[i].as_slice_mut(),
                self.second[i].as_slice_mut(),
            ) else {
                return Err(Error::Internal(
                    "optimizer arrays must be contiguous".into(),
                ));
            };
            update(self.kind, rate, w, g, s1, s2);
        }
        self.iterations += 1;
        Ok(())
    }
}

/// One step of `kind` on one weight `w` with gradient `g` and slots `s1`, `s2`, at the
/// step's learning rate `rate` ([`Optimizer::step_rate`]): Keras 3's `update_step`,
/// the oracle of the generated updates (the interpreter runs `update` ops with it).
pub fn update(
    kind: Optimizer,
    rate: f64,
    w: &mut [f64],
    g: &[f64],
    s1: &mut [f64],
    s2: &mut [f64],
) {
    match kind {
        Optimizer::Sgd {
            momentum, nesterov, ..
        } => {
            for k in 0..w.len() {
                if momentum == 0.0 {
                    w[k] -= g[k] * rate;
                } else {
                    s1[k] = s1[k] * momentum - g[k] * rate;
                    if nesterov {
                        w[k] += s1[k] * momentum - g[k] * rate;
                    } else {
                        w[k] += s1[k];
                    }
                }
            }
        }
        Optimizer::Adam {
            beta_1,
            beta_2,
            epsilon,
            ..
        } => {
            let (b1, b2) = (1.0 - beta_1, 1.0 - beta_2);
            for k in 0..w.len() {
                s1[k] += (g[k] - s1[k]) * b1;
                s2[k] += (g[k] * g[k] - s2[k]) * b2;
                w[k] -= (s1[k] * rate) / (s2[k].sqrt() + epsilon);
            }
        }
        Optimizer::Rmsprop {
            rho,
            momentum,
            epsilon,
            ..
        } => {
            for k in 0..w.len() {
                s1[k] = rho * s1[k] + (1.0 - rho) * g[k] * g[k];
                // Keras 3 adds epsilon to the velocity, inside the square root.
                let inc = rate * g[k] / (s1[k] + epsilon).sqrt();
                if momentum > 0.0 {
                    s2[k] = momentum * s2[k] + inc;
                    w[k] -= s2[k];
                } else {
                    w[k] -= inc;
                }
            }
        }
    }
}
