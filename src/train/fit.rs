//! Keras's `fit` on a [`Trainer`]: epochs of batches (shuffled by a seeded stream), the
//! validation split, and the weights of the last good epoch kept when training diverges.

use super::{EpochLog, FitOptions, Trainer, DROPOUT_STREAM};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::jit::Buf;
use crate::model::ResetStates;
use ndarray::{ArrayD, Axis, IxDyn};
use rand_pcg::Pcg64Mcg;

impl Trainer {
    /// Whether every weight and optimizer slot is finite.
    fn finite(&self) -> bool {
        let slots = self.slots.iter().flatten();
        self.weights.iter().chain(slots).all(|b| all_finite(b))
    }

    /// Keras's `fit`: returns the log of every epoch. `on_epoch` sees each log as it
    /// is made. A non-finite loss stops training with an error naming the epoch and
    /// batch, and so do non-finite weights or slots after an epoch's last update (whose
    /// loss was still finite); the weights of the last good epoch are kept.
    pub fn fit(
        &mut self,
        data: &Dataset,
        o: &FitOptions,
        mut on_epoch: impl FnMut(&EpochLog),
    ) -> Result<Vec<EpochLog>> {
        let y = data
            .y
            .as_ref()
            .ok_or_else(|| Error::Data("training needs targets (y)".into()))?;
        let n = data.x.shape()[0];
        if !(0.0..1.0).contains(&o.validation_split) {
            return Err(Error::Usage(format!(
                "validation_split must be in [0, 1), not {}",
                o.validation_split
            )));
        }
        // Keras's split: the first ⌊n · (1 − split)⌋ samples train (so a validation set
        // of 10 · 0.25 is 3 samples, not 2), the rest validate, and neither may be empty.
        let n_train = if o.validation_split > 0.0 {
            ((n as f64) * (1.0 - o.validation_split)).floor() as usize
        } else {
            n
        };
        if n_train == 0 || (o.validation_split > 0.0 && n_train >= n) {
            return Err(Error::Data(format!(
                "{n} samples are too few to split into training and validation sets as validation_split={} says; give more data or another split",
                o.validation_split
            )));
        }
        let n_val = n - n_train;
        let stateful = self.spec.is_stateful();
        if stateful && !n_train.is_multiple_of(o.batch_size) {
            return Err(Error::Data(format!(
                "a stateful model trains on whole batches: {n_train} samples are not a multiple of batch_size={}",
                o.batch_size
            )));
        }
        let mut rng = crate::init::stream(o.seed, 7, 7);
        self.dropout_rng = crate::init::stream(o.seed, DROPOUT_STREAM.0, DROPOUT_STREAM.1);
        let mut logs = Vec::new();
        // The last checkpoint: where training goes back to when it diverges, to replay the
        // epochs since up to the last good one ([`CHECKPOINT`]).
        let mut good = Snapshot::new(self, &rng);
        // Each batch's rows, in arrays kept from batch to batch.
        let (mut xb, mut tb) = (ArrayD::zeros(IxDyn(&[0])), ArrayD::zeros(IxDyn(&[0])));
        for epoch in 1..=o.epochs {
            if epoch > 1 && (epoch - 1) % CHECKPOINT == 0 {
                good.take(self, &rng, epoch);
            }
            let order = epoch_order(&mut rng, n_train, o.shuffle);
            let sums = self.batches(&data.x, y, &order, o.batch_size, &mut xb, &mut tb)?;
            // A diverged step gives a non-finite loss at the next step; the last batch's
            // update can overflow with a finite loss, so the weights are checked too.
            let sums = match sums {
                Err((b, l)) => Err(format!("the loss is {l} at epoch {epoch}, batch {b}")),
                Ok(_) if !self.finite() => Err(format!(
                    "the weights are not finite after epoch {epoch}, batch {} (its update overflowed)",
                    n_train.div_ceil(o.batch_size)
                )),
                Ok(sums) => Ok(sums),
            };
            let (total, acc) = match sums {
                Ok(sums) => sums,
                Err(what) => {
                    // Back to the checkpoint, then the epochs since as they ran: the same
                    // orders, steps and resets, so the same bits.
                    rng = good.restore(self);
                    for _ in good.epoch..epoch {
                        let order = epoch_order(&mut rng, n_train, o.shuffle);
                        if self
                            .batches(&data.x, y, &order, o.batch_size, &mut xb, &mut tb)?
                            .is_err()
                        {
                            return Err(Error::Internal("an epoch diverged when replayed".into()));
                        }
                        // The epoch's end and its validation leave a stateful model's states
                        // reset.
                        if stateful && (o.reset_states == ResetStates::Epoch || n_val > 0) {
                            self.reset_states();
                        }
                    }
                    return Err(Error::Data(format!(
                        "training diverged: {what}; the weights of epoch {} are kept",
                        epoch - 1
                    )));
                }
            };
            if stateful && o.reset_states == ResetStates::Epoch {
                self.reset_states();
            }
            let validation = if n_val > 0 {
                let xv = data.x.slice_axis(Axis(0), (n_train..n).into()).to_owned();
                let yv = y.slice_axis(Axis(0), (n_train..n).into()).to_owned();
                let r = self.evaluate(&xv, &yv, o.batch_size)?;
                if stateful {
                    self.reset_states();
                }
                Some(r)
            } else {
                None
            };
            let log = EpochLog {
                epoch,
                loss: total / n_train as f64,
                metric: self.metric.map(|_| acc / n_train as f64),
                validation,
            };
            on_epoch(&log);
            logs.push(log);
        }
        Ok(logs)
    }
}

/// Epochs from one checkpoint of [`Trainer::fit`] to the next. A checkpoint copies the
/// weights, the optimizer's slots and step count, the carried states and the random
/// streams; when training diverges, `fit` goes back to the last one and replays the
/// epochs since, up to the last good one. Copied at the start of every epoch instead,
/// they cost the tutorial's training (`lstmc run`, two threads) about 5%: 4.41–4.50 s
/// with the copy, 4.20–4.26 s without (four alternating pairs, 2026-12-06); into fresh
/// buffers each epoch, or by stores that bypass the cache, no less. A divergence now
/// replays at most this many epochs less one.
const CHECKPOINT: usize = 16;

/// The order of an epoch's `n` samples: shuffled by `rng` (Fisher–Yates) or as they are.
fn epoch_order(rng: &mut Pcg64Mcg, n: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        for i in (1..order.len()).rev() {
            let j = rand::Rng::random_range(rng, 0..=i);
            order.swap(i, j);
        }
    }
    order
}

impl Trainer {
    /// One epoch's batches of `batch_size` samples in `order` (their rows copied into
    /// `xb` and `tb`): the sums of the loss and metric over its samples, or the batch
    /// (from 1) whose loss was not finite and that loss.
    fn batches(
        &mut self,
        x: &ArrayD<f64>,
        y: &ArrayD<f64>,
        order: &[usize],
        batch_size: usize,
        xb: &mut ArrayD<f32>,
        tb: &mut ArrayD<f64>,
    ) -> Result<std::result::Result<(f64, f64), (usize, f64)>> {
        let (mut total, mut acc) = (0.0, 0.0);
        for (b, chunk) in order.chunks(batch_size).enumerate() {
            rows_into(x, chunk, xb, |v| v as f32);
            rows_into(y, chunk, tb, |v| v);
            let (l, a) = self.train_on_batch(xb, tb)?;
            if !l.is_finite() {
                return Ok(Err((b + 1, l)));
            }
            total += l * chunk.len() as f64;
            acc += a.unwrap_or(0.0) * chunk.len() as f64;
        }
        Ok(Ok((total, acc)))
    }
}

/// Rows `rows` of `src` (along its first axis) into `dst`, converted by `f`: `dst` takes
/// `src`'s shape with `rows.len()` rows, and is allocated anew only when that shape
/// changes. Selected and converted into new arrays, a batch's rows took the tutorial's
/// training at one thread about 1.7% of its time in allocations and `ndarray`'s
/// bookkeeping (`perf`), for a batch of four inputs and twelve targets.
fn rows_into<A: Copy, B: Copy + Default>(
    src: &ArrayD<A>,
    rows: &[usize],
    dst: &mut ArrayD<B>,
    f: impl Fn(A) -> B,
) {
    let mut shape = src.shape().to_vec();
    shape[0] = rows.len();
    if dst.shape() != shape.as_slice() {
        *dst = ArrayD::from_elem(IxDyn(&shape), B::default());
    }
    let len = shape[1..].iter().product::<usize>();
    match (src.as_slice(), dst.as_slice_mut()) {
        (Some(s), Some(d)) => {
            for (to, &r) in d.chunks_exact_mut(len.max(1)).zip(rows) {
                for (t, &v) in to.iter_mut().zip(&s[r * len..(r + 1) * len]) {
                    *t = f(v);
                }
            }
        }
        _ => *dst = src.select(Axis(0), rows).mapv(f),
    }
}

/// A checkpoint of [`Trainer::fit`] ([`CHECKPOINT`]): the weights, optimizer slots, step
/// count and carried states at the start of epoch `epoch`, and the shuffling and dropout
/// streams there.
struct Snapshot {
    weights: Vec<Buf>,
    slots: Vec<[Buf; 2]>,
    iterations: u64,
    states: Vec<((usize, &'static str), Buf)>,
    rng: Pcg64Mcg,
    dropout_rng: Pcg64Mcg,
    epoch: usize,
}

impl Snapshot {
    /// A copy of `t` at the start of the first epoch, with the shuffling stream `rng`.
    fn new(t: &Trainer, rng: &Pcg64Mcg) -> Snapshot {
        let mut s = Snapshot {
            weights: Vec::new(),
            slots: Vec::new(),
            iterations: 0,
            states: Vec::new(),
            rng: rng.clone(),
            dropout_rng: t.dropout_rng.clone(),
            epoch: 1,
        };
        s.take(t, rng, 1);
        s
    }

    /// Copies `t`'s weights, slots, steps and states, into the buffers of the last copy,
    /// with `rng` and `t`'s dropout stream, at the start of `epoch`.
    fn take(&mut self, t: &Trainer, rng: &Pcg64Mcg, epoch: usize) {
        self.weights.resize_with(t.weights.len(), Buf::new);
        for (mine, w) in self.weights.iter_mut().zip(&t.weights) {
            mine.copy_from(w);
        }
        self.slots.resize_with(t.slots.len(), Default::default);
        for (mine, s) in self.slots.iter_mut().zip(&t.slots) {
            mine[0].copy_from(&s[0]);
            mine[1].copy_from(&s[1]);
        }
        self.iterations = t.iterations;
        self.states.clone_from(&t.states);
        self.rng.clone_from(rng);
        self.dropout_rng.clone_from(&t.dropout_rng);
        self.epoch = epoch;
    }

    /// Puts the copy back into `t` (swapping buffers, not copying them); returns the
    /// shuffling stream.
    fn restore(&mut self, t: &mut Trainer) -> Pcg64Mcg {
        std::mem::swap(&mut self.weights, &mut t.weights);
        std::mem::swap(&mut self.slots, &mut t.slots);
        std::mem::swap(&mut self.states, &mut t.states);
        t.iterations = self.iterations;
        t.dropout_rng.clone_from(&self.dropout_rng);
        self.rng.clone()
    }
}

/// Whether every element of `xs` is finite: no exponent field of all ones (∞, NaN).
/// One unit added to an exponent field carries into the sign bit only from all ones, so
/// the elements' fields plus one unit, or-ed together, have the sign bit clear. Three
/// integer operations a lane, with no early exit, in any vector set: the first version
/// folded the fields' maximum, which the baseline x86-64 vector set has no instruction
/// for, and took 1.8% of the tutorial's training at one thread (`perf`).
fn all_finite(xs: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    const UNIT: u32 = 0x0080_0000;
    let carried = xs
        .iter()
        .fold(0, |acc, x| acc | ((x.to_bits() & EXPONENT) + UNIT));
    carried & 0x8000_0000 == 0
}

#[cfg(test)]
mod tests {
    use super::{all_finite, rows_into};
    use ndarray::{ArrayD, Axis, IxDyn};

    /// A batch's rows, in any order and repeated, converted: the same array as a
    /// selection of them converted, in a kept array as in a new one, from a source
    /// in standard layout or not.
    #[test]
    fn rows_into_selects_and_converts_as_select_does() {
        let src = ArrayD::from_shape_fn(IxDyn(&[6, 3, 2]), |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as f64 + 0.1
        });
        // The same values, stored column-major: no slice to copy from.
        let column_major = src
            .clone()
            .reversed_axes()
            .as_standard_layout()
            .reversed_axes()
            .to_owned();
        assert_eq!(column_major, src);
        assert!(column_major.as_slice().is_none());
        let mut dst = ArrayD::zeros(IxDyn(&[0]));
        for rows in [&[4, 0, 4][..], &[5, 1, 2], &[3], &[]] {
            let expected = src.select(Axis(0), rows).mapv(|v| v as f32);
            for from in [&src, &column_major] {
                rows_into(from, rows, &mut dst, |v| v as f32);
                assert_eq!(dst, expected, "rows {rows:?}");
            }
        }
    }

    /// Every sign and exponent field, with mantissas at both ends, alone; then ∞ and
    /// NaNs at every place in slices of every length up to 70 (beyond any vector's width
    /// and unrolling) of finite values at both ends of the range: the same answer as
    /// `f32::is_finite` on every element.
    #[test]
    fn all_finite_finds_any_infinity_or_nan_anywhere() {
        for sign in [0u32, 1 << 31] {
            for exponent in 0..256u32 {
                for mantissa in [0, 1, 0x40_0000, 0x7f_ffff] {
                    let x = f32::from_bits(sign | exponent << 23 | mantissa);
                    assert_eq!(all_finite(&[x]), x.is_finite(), "{:#x}", x.to_bits());
                }
            }
        }
        assert!(all_finite(&[]));
        let bad = [
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffff_ffff),
        ];
        for len in 1..=70 {
            let finite: Vec<f32> = (0..len)
                .map(|i| [f32::MAX, -1.5e-40, f32::MIN, 0.0][i % 4])
                .collect();
            assert!(all_finite(&finite), "len {len}");
            for at in 0..len {
                for x in bad {
                    let mut v = finite.clone();
                    v[at] = x;
                    assert!(!all_finite(&v), "{:#x} at {at} of {len}", x.to_bits());
                }
            }
        }
    }
}
