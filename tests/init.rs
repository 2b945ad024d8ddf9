//! Keras 3's initializers: scales, orthogonality, unit forget bias, and seeded reproducibility.

use lstmc::init::{draw, stream};
use lstmc::model::Initializer;
use lstmc::weights::Weights;

fn spec(src: &str) -> lstmc::model::ModelSpec {
    lstmc::front::load("t.model", src.as_bytes()).unwrap()
}

#[test]
fn glorot_uniform_stays_within_its_limit_and_fills_it() {
    let t = draw(Initializer::GlorotUniform, &[64, 512], &mut stream(1, 0, 0));
    let limit = (6.0f64 / (64.0 + 512.0)).sqrt();
    let max = t.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(
        max <= limit && max > 0.99 * limit,
        "max {max}, limit {limit}"
    );
    let var = t.iter().map(|v| v * v).sum::<f64>() / t.len() as f64;
    // Uniform(-l, l) has variance l²/3.
    assert!(
        (var - limit * limit / 3.0).abs() < 0.03 * limit * limit / 3.0,
        "variance {var}"
    );
}

#[test]
fn truncated_normals_have_keras_variance_and_cut_at_two_sigma() {
    let t = draw(Initializer::HeNormal, &[200, 300], &mut stream(2, 0, 0));
    let want_var = 2.0 / 200.0;
    let var = t.iter().map(|v| v * v).sum::<f64>() / t.len() as f64;
    assert!(
        (var - want_var).abs() < 0.03 * want_var,
        "variance {var}, want {want_var}"
    );
    let sd = want_var.sqrt() / 0.879_625_661_034_239_8;
    assert!(t.iter().all(|v| v.abs() <= 2.0 * sd));
}

#[test]
fn orthogonal_is_orthonormal_in_both_orientations() {
    for shape in [[8usize, 32], [32, 8], [5, 5]] {
        let t = draw(Initializer::Orthogonal, &shape, &mut stream(3, 0, 1));
        let m = t.into_dimensionality::<ndarray::Ix2>().unwrap();
        // The shorter side is orthonormal: rows for (8, 32), columns for (32, 8).
        let g = if shape[0] <= shape[1] {
            m.dot(&m.t())
        } else {
            m.t().dot(&m)
        };
        for i in 0..g.nrows() {
            for j in 0..g.ncols() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (g[[i, j]] - want).abs() < 1e-12,
                    "{shape:?} gram[{i},{j}] = {}",
                    g[[i, j]]
                );
            }
        }
    }
}

#[test]
fn lstm_bias_has_unit_forget_bias_and_weights_are_reproducible() {
    let s = spec("LSTM 4 input_dim=2 input_length=3\nDense 2");
    let a = Weights::init(&s, 7);
    let b = Weights::init(&s, 7);
    let c = Weights::init(&s, 8);
    assert_eq!(a, b);
    assert_ne!(a.get(0, "kernel"), c.get(0, "kernel"));
    let bias: Vec<f64> = a.get(0, "bias").unwrap().iter().copied().collect();
    assert_eq!(
        bias,
        [0., 0., 0., 0., 1., 1., 1., 1., 0., 0., 0., 0., 0., 0., 0., 0.]
    );
    let off = spec("LSTM 4 input_dim=2 input_length=3 unit_forget_bias=false");
    assert!(Weights::init(&off, 7)
        .get(0, "bias")
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
}
