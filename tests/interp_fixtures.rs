//! Every Keras fixture through the IR interpreter: outputs and `states_after`
//! of every batch (stateful cases carry their states across batches) to 1e-9.

mod common;

use common::*;
use lstmc::reference::Reference;

#[test]
fn all_keras_fixtures_match_to_1e9() {
    let names = fixture_names();
    assert_eq!(names.len(), 19, "the 19 public Keras fixtures are present");
    for name in names {
        let fx = load(&name);
        let spec = fx.spec();
        let weights = fx.weights(&spec);
        let mut r = Reference::new(spec, weights);
        for (b, batch) in fx.batches().iter().enumerate() {
            let out = r.predict_batch(&array(&batch["x"])).unwrap();
            assert_close(
                &format!("{name} batch {b} y"),
                &out.y,
                &array(&batch["y"]),
                1e-9,
            );
            let want = batch["states_after"].as_array().unwrap();
            for s in want {
                let layer = s["layer"].as_u64().unwrap() as usize;
                for slot in ["h", "c"] {
                    if s[slot].is_null() {
                        continue;
                    }
                    let got = out
                        .states
                        .iter()
                        .find(|(l, n, _)| *l == layer && *n == slot)
                        .unwrap_or_else(|| panic!("{name}: no state {slot} for layer {layer}"));
                    assert_close(
                        &format!("{name} batch {b} layer {layer} {slot}"),
                        &got.2,
                        &array(&s[slot]),
                        1e-9,
                    );
                }
            }
        }
    }
}

#[test]
fn stateful_reset_restarts_from_zero_states() {
    for name in [
        "seed_lstm3_stateful",
        "lstm_stateful_batch2",
        "gru_stateful",
    ] {
        let fx = load(name);
        let spec = fx.spec();
        let weights = fx.weights(&spec);
        let mut r = Reference::new(spec, weights);
        let b0 = &fx.batches()[0];
        let b1 = &fx.batches()[1];
        r.predict_batch(&array(&b0["x"])).unwrap();
        // Carried: batch 1 after batch 0 gives Keras's second output...
        let carried = r.predict_batch(&array(&b1["x"])).unwrap();
        assert_close(
            &format!("{name} carried"),
            &carried.y,
            &array(&b1["y"]),
            1e-9,
        );
        // ...and after a reset, batch 0 gives the first output again.
        r.reset_states();
        let again = r.predict_batch(&array(&b0["x"])).unwrap();
        assert_close(
            &format!("{name} after reset"),
            &again.y,
            &array(&b0["y"]),
            1e-9,
        );
    }
}
