//! Losses: Keras's values on the fixtures (from the interpreter's outputs), and
//! each loss's gradient against central finite differences.

mod common;

use common::*;
use lstmc::loss::loss;
use lstmc::model::Loss;
use lstmc::reference::Reference;
use ndarray::{ArrayD, IxDyn};

#[test]
fn fixture_losses_equal_keras() {
    for name in fixture_names() {
        let fx = load(&name);
        let l = &fx.json["loss"];
        let kind = fx.loss_kind();
        let spec = fx.spec();
        let w = fx.weights(&spec);
        // On the first batch, from zero states.
        let y = Reference::new(spec, w)
            .predict_batch(&array(&fx.batches()[0]["x"]))
            .unwrap()
            .y;
        let (value, _) = loss(kind, &y, &array(&l["target"])).unwrap();
        let want = l["value"].as_f64().unwrap();
        assert!(
            (value - want).abs() <= 1e-10 * want.abs().max(1.0),
            "{name}: {value} vs {want}"
        );
    }
}

#[test]
fn loss_gradients_match_finite_differences() {
    let mut rng = lstmc::init::stream(5, 0, 0);
    let y = ArrayD::from_shape_fn(IxDyn(&[3, 2, 4]), |_| {
        rand::Rng::random_range(&mut rng, 0.05..0.95)
    });
    let t_dense = ArrayD::from_shape_fn(IxDyn(&[3, 2, 4]), |_| {
        rand::Rng::random_range(&mut rng, 0.0..1.0)
    });
    let mut one_hot = ArrayD::zeros(IxDyn(&[3, 2, 4]));
    let mut idx = ArrayD::zeros(IxDyn(&[3, 2]));
    for r in 0..6 {
        one_hot.as_slice_mut().unwrap()[r * 4 + r % 4] = 1.0;
        idx.as_slice_mut().unwrap()[r] = (r % 4) as f64;
    }
    let cases = [
        (Loss::Mse, &t_dense),
        (Loss::Mae, &t_dense),
        (Loss::BinaryCrossentropy, &t_dense),
        (Loss::CategoricalCrossentropy, &one_hot),
        (Loss::SparseCategoricalCrossentropy, &idx),
    ];
    for (kind, t) in cases {
        let (_, g) = loss(kind, &y, t).unwrap();
        for i in 0..y.len() {
            let h = 1e-6;
            let mut yp = y.clone();
            yp.as_slice_mut().unwrap()[i] += h;
            let mut ym = y.clone();
            ym.as_slice_mut().unwrap()[i] -= h;
            let fd = (loss(kind, &yp, t).unwrap().0 - loss(kind, &ym, t).unwrap().0) / (2.0 * h);
            let gi = g.as_slice().unwrap()[i];
            assert!(
                (fd - gi).abs() <= 1e-6 * gi.abs().max(1.0),
                "{kind:?} element {i}: {gi} vs {fd}"
            );
        }
    }
    // Sparse and one-hot targets give the same loss.
    assert_eq!(
        loss(Loss::SparseCategoricalCrossentropy, &y, &idx)
            .unwrap()
            .0,
        loss(Loss::CategoricalCrossentropy, &y, &one_hot).unwrap().0
    );
}

/// Generated code passes a loss to its host kernel as its index in `Loss::all()`
/// (`jit::host::loss_code`), and the language names losses by `Loss::NAMES`: the two
/// lists must agree, and each name parse back to its loss.
#[test]
fn loss_codes_and_names_agree() {
    assert_eq!(Loss::all().len(), Loss::NAMES.len());
    for (i, l) in Loss::all().into_iter().enumerate() {
        assert_eq!(l.name(), Loss::NAMES[i]);
        assert_eq!(Loss::from_name(Loss::NAMES[i]), Some(l));
        assert_eq!(lstmc::jit::host::loss_code(l), i as i64);
    }
}
