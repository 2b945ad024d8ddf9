//! Keras 3's weight initializers, seeded and reproducible.
//!
//! The distributions and scales are Keras's (`VarianceScaling` for the
//! Glorot/He/LeCun family, with truncated normals at two standard deviations;
//! `Orthogonal` by QR of a normal matrix with the signs of R's diagonal taken
//! out). The random streams are lstmc's own: each tensor draws from a PCG
//! stream derived from (seed, layer, weight), so a tensor's values do not
//! depend on the order in which others are drawn.

use crate::model::{Initializer, LayerKind, LayerSpec};
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayD, Axis, IxDyn, ShapeBuilder};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// The random stream for weight `weight` of layer `layer`.
pub fn stream(seed: u64, layer: usize, weight: usize) -> Pcg64Mcg {
    let mut z = seed ^ ((layer as u64) << 32) ^ ((weight as u64) << 16) ^ 0x9e37_79b9_7f4a_7c15;
    // splitmix64, to spread nearby seeds apart.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    Pcg64Mcg::seed_from_u64(z)
}

/// Keras's fans: for a 2-D shape `(in, out)`; for 1-D both are its length.
fn fans(shape: &[usize]) -> (f64, f64) {
    match shape {
        [] => (1.0, 1.0),
        [n] => (*n as f64, *n as f64),
        [.., a, b] => {
            let receptive: usize = shape[..shape.len() - 2].iter().product();
            ((a * receptive) as f64, (b * receptive) as f64)
        }
    }
}

fn normal(rng: &mut Pcg64Mcg) -> f64 {
    // Box–Muller.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn truncated_normal(rng: &mut Pcg64Mcg, stddev: f64) -> f64 {
    loop {
        let z = normal(rng);
        if z.abs() <= 2.0 {
            return z * stddev;
        }
    }
}

/// Draws a tensor of `shape` from an initializer.
pub fn draw(init: Initializer, shape: &[usize], rng: &mut Pcg64Mcg) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    let (fan_in, fan_out) = fans(shape);
    let uniform = |rng: &mut Pcg64Mcg, limit: f64| {
        (0..n)
            .map(|_| rng.random_range(-limit..limit))
            .collect::<Vec<f64>>()
    };
    // Keras divides by the stddev of a unit normal truncated at ±2.
    let trunc = |rng: &mut Pcg64Mcg, var: f64| {
        let sd = var.sqrt() / 0.879_625_661_034_239_8;
        (0..n)
            .map(|_| truncated_normal(rng, sd))
            .collect::<Vec<f64>>()
    };
    let data = match init {
        Initializer::Zeros => vec![0.0; n],
        Initializer::Ones => vec![1.0; n],
        Initializer::GlorotUniform => uniform(rng, (6.0 / (fan_in + fan_out)).sqrt()),
        Initializer::HeUniform => uniform(rng, (6.0 / fan_in).sqrt()),
        Initializer::LecunUniform => uniform(rng, (3.0 / fan_in).sqrt()),
        Initializer::GlorotNormal => trunc(rng, 2.0 / (fan_in + fan_out)),
        Initializer::HeNormal => trunc(rng, 2.0 / fan_in),
        Initializer::LecunNormal => trunc(rng, 1.0 / fan_in),
        Initializer::Orthogonal => return orthogonal(shape, rng),
    };
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("length matches shape")
}

/// Keras's `Orthogonal(gain=1)`: rows × cols flattened as (prod(shape[..-1]), shape[-1]);
/// QR of a normal `(max, min)` matrix; Q times sign(diag R); transposed when rows < cols.
///
/// The columns of the normal `m × n` matrix are orthonormalized by Gram–Schmidt, twice
/// over for stability, which yields R with a positive diagonal: exactly Q·sign(diag R)
/// of any other QR. By blocks of [`ORTHO_BLOCK`] columns: each block's projection on
/// the columns before it is two matrix products (twice), then the block's own columns
/// by modified Gram–Schmidt. Column by column, the projections were dot products and
/// took 5.5 s for an LSTM of 1024 units (a 4096 × 1024 QR) and 127 s for 3000; by
/// blocks the work is the same, at the speed of matrix products. One block (up to 64
/// columns) is the column-by-column method.
fn orthogonal(shape: &[usize], rng: &mut Pcg64Mcg) -> ArrayD<f64> {
    let cols = *shape.last().unwrap_or(&1);
    let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
    let (m, n) = (rows.max(cols), rows.min(cols));
    // Column-major: column `j` is drawn `j`-th and lies contiguous.
    let draws: Vec<f64> = (0..m * n).map(|_| normal(rng)).collect();
    let mut q = Array2::from_shape_vec((m, n).f(), draws).expect("m · n values");
    for j0 in (0..n).step_by(ORTHO_BLOCK) {
        let j1 = (j0 + ORTHO_BLOCK).min(n);
        let (done, mut rest) = q.view_mut().split_at(Axis(1), j0);
        let mut block = rest.slice_mut(s![.., ..j1 - j0]);
        if j0 > 0 {
            for _ in 0..2 {
                let c = done.t().dot(&block);
                general_mat_mul(-1.0, &done, &c, 1.0, &mut block);
            }
        }
        for j in 0..block.ncols() {
            let (before, mut at) = block.view_mut().split_at(Axis(1), j);
            let mut col = at.column_mut(0);
            for _ in 0..2 {
                for i in 0..j {
                    let prev = before.column(i);
                    let dot: f64 = prev.iter().zip(col.iter()).map(|(a, b)| a * b).sum();
                    col.zip_mut_with(&prev, |x, y| *x -= dot * y);
                }
            }
            let norm = col
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
                .max(f64::MIN_POSITIVE);
            col.mapv_inplace(|x| x / norm);
        }
    }
    // `q` is Q (m × n). The result is Q (rows ≥ cols) or Qᵀ, in row-major order.
    let out = if rows >= cols { q.view() } else { q.t() };
    ArrayD::from_shape_vec(IxDyn(shape), out.iter().copied().collect())
        .expect("length matches shape")
}

/// Columns that [`orthogonal`] orthonormalizes as a block.
const ORTHO_BLOCK: usize = 64;

/// The initial weights of a layer, in Keras order (kernel, recurrent_kernel, bias).
pub fn layer_weights(layer: &LayerSpec, index: usize, seed: u64) -> Vec<ArrayD<f64>> {
    layer
        .weights()
        .iter()
        .enumerate()
        .map(|(w, spec)| {
            let mut rng = stream(seed, index, w);
            let init = match spec.name {
                "kernel" => layer.kernel_initializer,
                "recurrent_kernel" => layer.recurrent_initializer,
                _ => layer.bias_initializer,
            };
            let mut t = draw(init, &spec.shape, &mut rng);
            if spec.name == "bias" && layer.kind == LayerKind::Lstm && layer.unit_forget_bias {
                // Keras: concat(init(units), ones(units), init(2 * units)).
                let u = layer.units;
                t.as_slice_mut().expect("fresh arrays are contiguous")[u..2 * u].fill(1.0);
            }
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column-by-column method (modified Gram–Schmidt, twice) that [`orthogonal`]
    /// computes by blocks: the `m × n` Q, column-major.
    fn column_by_column(m: usize, n: usize, rng: &mut Pcg64Mcg) -> Vec<f64> {
        let mut q: Vec<Vec<f64>> = (0..n)
            .map(|_| (0..m).map(|_| normal(rng)).collect())
            .collect();
        for j in 0..n {
            for _ in 0..2 {
                for i in 0..j {
                    let (done, rest) = q.split_at_mut(j);
                    let dot: f64 = done[i].iter().zip(&rest[0]).map(|(a, b)| a * b).sum();
                    for (x, y) in rest[0].iter_mut().zip(&done[i]) {
                        *x -= dot * y;
                    }
                }
            }
            let norm = q[j].iter().map(|x| x * x).sum::<f64>().sqrt();
            q[j].iter_mut().for_each(|x| *x /= norm);
        }
        q.concat()
    }

    /// By blocks, the same Q as column by column: to 1e-12 over several blocks (square,
    /// the worst conditioned, and tall, both orientations), and the same bits within one.
    #[test]
    fn blocks_give_the_column_by_column_q() {
        for (rows, cols) in [(200, 200), (130, 520), (520, 130), (40, 64), (64, 9)] {
            let (m, n) = (rows.max(cols), rows.min(cols));
            let got = orthogonal(&[rows, cols], &mut stream(5, 1, 1));
            let want = column_by_column(m, n, &mut stream(5, 1, 1));
            for r in 0..rows {
                for c in 0..cols {
                    // Q[i, j] at `j · m + i`: element (r, c) of Q, or of Qᵀ.
                    let (i, j) = if rows >= cols { (r, c) } else { (c, r) };
                    let (g, w) = (got[[r, c]], want[j * m + i]);
                    if n <= ORTHO_BLOCK {
                        assert_eq!(g.to_bits(), w.to_bits(), "{rows}×{cols} ({r}, {c})");
                    } else {
                        assert!((g - w).abs() < 1e-12, "{rows}×{cols} ({r}, {c}): {g} {w}");
                    }
                }
            }
        }
    }
}
