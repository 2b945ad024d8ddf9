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
            assert_close(&format!("{name} batch {b} y"), &out.y, &array(&batch["y"]), 1e-9);
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
                    assert_close(&format!("{name} batch {b} layer {layer} {slot}"), &got.2, &array(&s[slot]), 1e-9);
                }
            }
        }
    }
}
