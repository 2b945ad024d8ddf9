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
        let t = (self.iterations + 1) as f64;
        for (i, (w, g)) in weights.iter_mut().zip(grads).enumerate() {
            if w.shape() != g.shape() {
                return Err(Error::Internal(format!(
                    "gradient {i} is {:?}, weight {:?}",
                    g.shape(),
                    w.shape()
                )));
            }
            match self.kind {
                Optimizer::Sgd {
                    learning_rate: lr,
                    momentum,
                    nesterov,
                } => {
                    if momentum == 0.0 {
                        w.zip_mut_with(g, |w, &g| *w -= g * lr);
                    } else {
                        let m = &mut self.first[i];
                        m.zip_mut_with(g, |m, &g| *m = *m * momentum - g * lr);
                        if nesterov {
                            ndarray::Zip::from(&mut **w)
                                .and(&*m)
                                .and(*g)
                                .for_each(|w, &m, &g| *w += m * momentum - g * lr);
                        } else {
                            w.zip_mut_with(m, |w, &m| *w += m);
                        }
                    }
                }
                Optimizer::Adam {
                    learning_rate: lr,
                    beta_1,
                    beta_2,
                    epsilon,
                } => {
                    let alpha = lr * (1.0 - beta_2.powf(t)).sqrt() / (1.0 - beta_1.powf(t));
                    let (m, v) = (&mut self.first[i], &mut self.second[i]);
                    // Plain slice loops (all four are fresh, contiguous arrays): they vectorize.
                    let (Some(w), Some(g), Some(m), Some(v)) = (
                        w.as_slice_mut(),
                        g.as_slice(),
                        m.as_slice_mut(),
                        v.as_slice_mut(),
                    ) else {
                        return Err(Error::Internal(
                            "optimizer arrays must be contiguous".into(),
                        ));
                    };
                    let (b1, b2) = (1.0 - beta_1, 1.0 - beta_2);
                    for k in 0..w.len() {
                        m[k] += (g[k] - m[k]) * b1;
                        v[k] += (g[k] * g[k] - v[k]) * b2;
                        w[k] -= (m[k] * alpha) / (v[k].sqrt() + epsilon);
                    }
                }
                Optimizer::Rmsprop {
                    learning_rate: lr,
                    rho,
                    momentum,
                    epsilon,
                } => {
                    let vel = &mut self.first[i];
                    vel.zip_mut_with(g, |v, &g| *v = rho * *v + (1.0 - rho) * g * g);
                    // Keras 3 adds epsilon to the velocity, inside the square root.
                    let inc: ArrayD<f64> = ndarray::Zip::from(&*vel)
                        .and(*g)
                        .map_collect(|&v, &g| lr * g / (v + epsilon).sqrt());
                    if momentum > 0.0 {
                        let mom = &mut self.second[i];
                        mom.zip_mut_with(&inc, |m, &d| *m = momentum * *m + d);
                        w.zip_mut_with(mom, |w, &m| *w -= m);
                    } else {
                        w.zip_mut_with(&inc, |w, &d| *w -= d);
                    }
                }
            }
        }
        self.iterations += 1;
        Ok(())
    }
}
