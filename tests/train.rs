//! Training on native code: every fixture's `train` block (Keras's
//! `train_on_batch` steps on the first batch from zero states) reproduced to
//! f32 precision: the loss before each step and the final weights.

mod common;

use common::*;
use lstmc::train::Trainer;

#[test]
fn every_fixture_train_block_on_native_code() {
    for name in fixture_names() {
        let fx = load(&name);
        let spec = fx.spec();
        let w = fx.weights(&spec);
        let tr = &fx.json["train"];
        let l = &fx.json["loss"];
        let (opt, kind) = (fx.optimizer(), fx.loss_kind());
        let mut t = Trainer::new(spec.clone(), w, kind, opt, lstmc::jit::Options::default());
        let x = array(&fx.batches()[0]["x"]).mapv(|v| v as f32);
        let target = array(&l["target"]);
        for (k, want) in tr["losses"].as_array().unwrap().iter().enumerate() {
            t.reset_states();
            let (value, _) = t.train_on_batch(&x, &target).unwrap();
            let want = want.as_f64().unwrap();
            assert!(
                (value - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{name} step {k}: loss {value}, Keras {want}"
            );
        }
        let want = fx.final_weights(&spec);
        for ((n, got), (_, want)) in t.weights.tensors.iter().zip(&want.tensors) {
            for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                    "{name} final {n}[{i}]: {g} vs Keras {w}"
                );
            }
        }
    }
}
