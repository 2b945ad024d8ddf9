//! Arbitrary bytes through the front end: parse, check, and for models that
//! check, lowering and the verifier. Nothing may panic; every error must be
//! renderable. Run with `cargo fuzz run parse_check` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match lstmc::front::load("fuzz.model", data) {
        Err(d) => {
            let _ = d.render();
        }
        Ok(spec) => {
            let _ = spec.summary();
            // Lower only what is small enough to build quickly.
            let small = spec.layers.iter().all(|l| l.units <= 64 && l.input_features <= 64)
                && spec.input.time.unwrap_or(1) <= 16;
            if small {
                let shapes = lstmc::ir::lower::Shapes { batch: 2, time: spec.input.time.unwrap_or(3) };
                let f = lstmc::ir::lower::lower(&spec, shapes).expect("a checked model lowers");
                lstmc::ir::verify::verify(&f).expect("lowered IR verifies");
            }
        }
    }
});
