//! Reverse-mode gradients of the IR, run by the interpreter: every Keras
//! fixture's `grads` (every weight) and `grad_x`, and central finite
//! differences on random models.

mod common;

use common::random::{smooth_model, RandomModel};
use common::*;
use lstmc::autodiff::gradient;
use lstmc::interp;
use lstmc::ir::{lower, verify::verify, GradRole, OutputRole};
use lstmc::loss::loss;
use lstmc::model::{Loss, ModelSpec};
use lstmc::reference::{batch_shapes, Reference};
use lstmc::weights::Weights;
use ndarray::ArrayD;
use proptest::prelude::*;
use std::collections::HashMap;

/// Loss and gradients (by input role) of `spec` on `x` against `target`, from zero states.
fn grads(
    spec: &ModelSpec,
    w: &Weights,
    x: &ArrayD<f64>,
    kind: Loss,
    target: &ArrayD<f64>,
) -> (f64, HashMap<String, ArrayD<f64>>) {
    let y = Reference::new(spec.clone(), w.clone())
        .predict_batch(x)
        .unwrap()
        .y;
    let (value, dy) = loss(kind, &y, target).unwrap();
    let f = lower::lower(spec, batch_shapes(spec, x.shape()).unwrap()).unwrap();
    let g = gradient(&f).unwrap();
    verify(&g).unwrap_or_else(|e| panic!("{e}\n{}", lstmc::ir::print::print(&g, None)));
    let inputs = gradient_inputs(&g, x, w, &dy);
    let outs = interp::run(&g, &inputs).unwrap();
    let mut by_name = HashMap::new();
    for ((role, _), v) in g.outputs.iter().zip(outs) {
        if let OutputRole::Grad(GradRole(r)) = role {
            by_name.insert(r.to_string(), v);
        }
    }
    (value, by_name)
}

#[test]
fn every_fixture_gradient_equals_keras() {
    for name in fixture_names() {
        let fx = load(&name);
        let spec = fx.spec();
        let w = fx.weights(&spec);
        let l = &fx.json["loss"];
        let kind = fx.loss_kind();
        let (value, got) = grads(
            &spec,
            &w,
            &array(&fx.batches()[0]["x"]),
            kind,
            &array(&l["target"]),
        );
        assert!(
            (value - l["value"].as_f64().unwrap()).abs() < 1e-10,
            "{name}: loss"
        );
        for g in l["grads"].as_array().unwrap() {
            let key = format!("layers.{}.{}", g["layer"], g["name"].as_str().unwrap());
            assert_close(&format!("{name} d/d{key}"), &got[&key], &array(g), 1e-9);
        }
        assert_close(
            &format!("{name} d/dx"),
            &got["x"],
            &array(&l["grad_x"]),
            1e-9,
        );
    }
}

/// Every fixture's `train` block: `steps` of Keras's `train_on_batch` on the first batch
/// from zero states; the loss before each step and the final weights.
#[test]
fn every_fixture_train_block_is_reproduced() {
    use lstmc::optim::OptimizerState;
    for name in fixture_names() {
        let fx = load(&name);
        let spec = fx.spec();
        let mut w = fx.weights(&spec);
        let tr = &fx.json["train"];
        let kind = fx.optimizer();
        let shapes: Vec<Vec<usize>> = w.tensors.iter().map(|(_, t)| t.shape().to_vec()).collect();
        let shape_refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
        let mut opt = OptimizerState::new(kind, &shape_refs);
        let l = &fx.json["loss"];
        let loss_kind = fx.loss_kind();
        let x = array(&fx.batches()[0]["x"]);
        let target = array(&l["target"]);
        for (k, want) in tr["losses"].as_array().unwrap().iter().enumerate() {
            let (value, g) = grads(&spec, &w, &x, loss_kind, &target);
            let want = want.as_f64().unwrap();
            assert!(
                (value - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{name} step {k}: loss {value}, Keras {want}"
            );
            let gs: Vec<ArrayD<f64>> = w.tensors.iter().map(|(n, _)| g[n].clone()).collect();
            let grefs: Vec<&ArrayD<f64>> = gs.iter().collect();
            let mut wrefs: Vec<&mut ArrayD<f64>> = w.tensors.iter_mut().map(|(_, t)| t).collect();
            opt.step(&mut wrefs, &grefs).unwrap();
        }
        let want = fx.final_weights(&spec);
        for ((n, got), (_, want)) in w.tensors.iter().zip(&want.tensors) {
            assert_close(&format!("{name} final {n}"), got, want, 1e-8);
        }
    }
}

/// Central differences of the loss in f64 against the interpreter's gradient, at a few
/// entries of every weight (chosen by `pick`).
fn check_gradients(m: &RandomModel, pick: usize) -> Result<(), TestCaseError> {
    let spec = m.spec();
    let w = m.weights(&spec);
    let x = m.inputs(&spec, 1).remove(0);
    let y = Reference::new(spec.clone(), w.clone())
        .predict_batch(&x)
        .unwrap()
        .y;
    let target = y.mapv(|v| v * 0.5 + 0.1);
    let (value, got) = grads(&spec, &w, &x, Loss::Mse, &target);
    // Exploding linear stacks: differences of step 1e-5 cannot resolve their curvature.
    let largest = got
        .values()
        .flat_map(|g| g.iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    prop_assume!(value < 1e2 && largest < 1e3, "badly scaled model");
    let f = |w: &Weights| {
        let y = Reference::new(spec.clone(), w.clone())
            .predict_batch(&x)
            .unwrap()
            .y;
        loss(Loss::Mse, &y, &target).unwrap().0
    };
    // A few entries of every weight.
    for (t, (name, tensor)) in w.tensors.iter().enumerate() {
        for e in [pick % tensor.len(), (pick * 7 + t) % tensor.len()] {
            let central = |h: f64| {
                let mut wp = w.clone();
                wp.tensors[t].1.as_slice_mut().unwrap()[e] += h;
                let mut wm = w.clone();
                wm.tensors[t].1.as_slice_mut().unwrap()[e] -= h;
                (f(&wp) - f(&wm)) / (2.0 * h)
            };
            let (fd, fd_fine) = (central(1e-5), central(1e-6));
            // Where two step sizes disagree, differences are no reference (chaotic models).
            prop_assume!(
                (fd - fd_fine).abs() <= 1e-7 * fd.abs().max(1e-2),
                "finite differences unresolved"
            );
            let g = got[name].as_slice().unwrap()[e];
            prop_assert!(
                (fd - g).abs() <= 1e-6 * fd.abs().max(1e-2),
                "{}: d/d{}[{}]: autodiff {}, differences {}",
                m.text,
                name,
                e,
                g,
                fd
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(60))]

    /// Central differences of the loss in f64, on random models with smooth activations.
    #[test]
    fn gradients_match_finite_differences(m in smooth_model(), pick in 0..1000usize) {
        check_gradients(&m, pick)?;
    }
}

/// The cases the property test once failed on (kept in autodiff.proptest-regressions when
/// it drew from `random_model`, whose draws those seeds no longer replay). The third case
/// there, a GRU(14) into an LSTM(1) over 19 steps, is a chaotic model whose differences
/// disagree between step sizes: it is why `check_gradients` rejects unresolved ones.
#[test]
fn gradients_match_finite_differences_where_they_once_failed() {
    let cases = [
        ("LSTM 1 input_dim=2 input_length=1 activation=tanh recurrent_activation=tanh use_bias=false\n", 5, 3081924827092029851, 803),
        ("SimpleRNN 1 input_dim=1 input_length=15 activation=tanh use_bias=false\n", 1, 1368455334760650987, 845),
    ];
    for (text, batch, seed, pick) in cases {
        let m = RandomModel {
            text: text.into(),
            batch,
            seed,
        };
        match check_gradients(&m, pick) {
            Ok(()) => {}
            Err(TestCaseError::Fail(why)) => panic!("{why}"),
            Err(TestCaseError::Reject(why)) => panic!("{text}: no longer checkable ({why})"),
        }
    }
}
