//! Every Keras fixture through the JIT: outputs and states of every batch
//! (stateful cases carried across batches) to 1e-5 relative, 1e-6 absolute
//! near zero, and under every unrolling strategy.

mod common;

use common::*;
use lstmc::jit;
use lstmc::passes;
use lstmc::runtime::CompiledModel;

fn close32(what: &str, got: &ndarray::ArrayD<f32>, want: &ndarray::ArrayD<f64>) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
        let g = g as f64;
        assert!(
            (g - w).abs() <= 1e-6 + 1e-5 * w.abs(),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

fn run_fixture(name: &str, options: jit::Options) {
    let fx = load(name);
    let spec = fx.spec();
    let w = fx.weights(&spec);
    let mut m = CompiledModel::new(spec, &w, options);
    for (b, batch) in fx.batches().iter().enumerate() {
        let x = array(&batch["x"]).mapv(|v| v as f32);
        let out = m
            .predict_batch(&x)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        close32(&format!("{name} batch {b} y"), &out.y, &array(&batch["y"]));
        for s in batch["states_after"].as_array().unwrap() {
            let layer = s["layer"].as_u64().unwrap() as usize;
            for slot in ["h", "c"] {
                if s[slot].is_null() {
                    continue;
                }
                let got = out
                    .states
                    .iter()
                    .find(|(l, n, _)| *l == layer && *n == slot)
                    .unwrap();
                close32(
                    &format!("{name} batch {b} layer {layer} {slot}"),
                    &got.2,
                    &array(&s[slot]),
                );
            }
        }
    }
}

#[test]
fn all_keras_fixtures_through_the_jit() {
    for name in fixture_names() {
        run_fixture(&name, jit::Options::default());
    }
}

#[test]
fn all_keras_fixtures_without_unrolling_and_partially_unrolled() {
    for (full, part) in [(0, 1), (1, 3), (2, 2)] {
        let options = jit::Options {
            passes: passes::Options {
                full_unroll_max: full,
                partial_unroll_max: part,
                ..passes::Options::default()
            },
            ..jit::Options::default()
        };
        for name in fixture_names() {
            run_fixture(&name, options);
        }
    }
}

#[test]
fn all_keras_fixtures_with_every_matmul_on_the_host_gemm_and_every_kernel_split_between_threads() {
    for name in fixture_names() {
        run_fixture(&name, split_options());
    }
}

#[test]
fn a_stateful_model_refuses_another_batch_size_until_recompiled() {
    let fx = load("lstm_stateful_batch2");
    let spec = fx.spec();
    let w = fx.weights(&spec);
    let mut m = CompiledModel::new(spec.clone(), &w, jit::Options::default());
    let x2 = array(&fx.batches()[0]["x"]).mapv(|v| v as f32);
    m.predict_batch(&x2).unwrap();
    // A batch of one row: refused, never a silent reset.
    let x1 = x2.slice_axis(ndarray::Axis(0), (0..1).into()).to_owned();
    let err = m.predict_batch(&x1).unwrap_err().to_string();
    assert!(
        err.contains("stateful with batch size 2") && err.contains("set_batch_size(1)"),
        "{err}"
    );
    // Recompiled for batch 1: zero states, so row 0 of Keras's first batch comes out.
    m.set_batch_size(1).unwrap();
    let y = m.predict_batch(&x1).unwrap().y;
    let want = array(&fx.batches()[0]["y"]);
    close32(
        "batch 1 after set_batch_size",
        &y,
        &want.slice_axis(ndarray::Axis(0), (0..1).into()).to_owned(),
    );
}
