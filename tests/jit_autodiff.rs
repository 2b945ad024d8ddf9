//! The gradient function compiled to native code: the same gradients as the
//! interpreter, on every Keras fixture (and so Keras's own, to f32 precision)
//! and on random models.

mod common;

use common::random::random_model;
use common::*;
use lstmc::autodiff::gradient;
use lstmc::ir::{lower, OutputRole};
use lstmc::loss::loss;
use lstmc::model::{Loss, ModelSpec};
use lstmc::reference::{batch_shapes, Reference};
use lstmc::weights::Weights;
use ndarray::ArrayD;
use proptest::prelude::*;

/// Interpreter and JIT results of the gradient function, by output.
fn both(
    spec: &ModelSpec,
    w: &Weights,
    x: &ArrayD<f64>,
    kind: Loss,
    target: &ArrayD<f64>,
) -> Vec<(OutputRole, ArrayD<f64>, ArrayD<f32>)> {
    let y = Reference::new(spec.clone(), w.clone())
        .predict_batch(x)
        .unwrap()
        .y;
    let (_, dy) = loss(kind, &y, target).unwrap();
    let g = gradient(&lower::lower(spec, batch_shapes(spec, x.shape()).unwrap()).unwrap()).unwrap();
    let ins = gradient_inputs(&g, x, w, &dy);
    let want = lstmc::interp::run(&g, &ins).unwrap();
    let got = run_native(&g, &ins);
    g.outputs
        .iter()
        .zip(want)
        .zip(got)
        .map(|(((role, _), want), got)| (role.clone(), want, got.mapv(|v| v as f32)))
        .collect()
}

fn agree(what: &str, want: &ArrayD<f64>, got: &ArrayD<f32>, rel: f64) -> Result<(), String> {
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    for (i, (&w, &g)) in want.iter().zip(got.iter()).enumerate() {
        if (g as f64 - w).abs() > rel * scale {
            return Err(format!(
                "{what}: element {i}: jit {g}, interpreter {w} (scale {scale})"
            ));
        }
    }
    Ok(())
}

#[test]
fn fixture_gradients_through_the_jit() {
    for name in fixture_names() {
        let fx = load(&name);
        let spec = fx.spec();
        let w = fx.weights(&spec);
        let l = &fx.json["loss"];
        let kind = fx.loss_kind();
        for (role, want, got) in both(
            &spec,
            &w,
            &array(&fx.batches()[0]["x"]),
            kind,
            &array(&l["target"]),
        ) {
            if let OutputRole::Grad(_) = role {
                agree(&format!("{name} {role}"), &want, &got, 1e-4).unwrap();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(60))]

    #[test]
    fn random_gradients_through_the_jit(m in random_model()) {
        prop_assume!(!m.text.contains("stateful"));
        let spec = m.spec();
        let w = m.weights(&spec);
        let x = m.inputs(&spec, 1).remove(0);
        let y = Reference::new(spec.clone(), w.clone()).predict_batch(&x).unwrap().y;
        prop_assume!(y.iter().all(|v| v.abs() < 1e3), "overflowing model");
        let target = y.mapv(|v| v * 0.5 + 0.1);
        // Conditioning, on the interpreter alone: gradients that move when the input moves
        // by 1e-6 (kinks crossed, chaotic recurrences) cannot agree between f32 and f64.
        let nudged = both(&spec, &w, &x.mapv(|v| v * (1.0 + 1e-6)), Loss::Mse, &target);
        for ((_, a, _), (_, b, _)) in both(&spec, &w, &x, Loss::Mse, &target).iter().zip(&nudged) {
            let scale = a.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            prop_assume!(a.iter().zip(b.iter()).all(|(p, q)| (p - q).abs() <= 1e-4 * scale), "ill-conditioned");
        }
        for (role, want, got) in both(&spec, &w, &x, Loss::Mse, &target) {
            if let OutputRole::Grad(_) = role {
                prop_assume!(want.iter().all(|v| v.abs() < 1e3), "exploding gradients");
                let r = agree(&format!("{} {role}", m.text), &want, &got, 1e-3);
                prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            }
        }
    }
}
