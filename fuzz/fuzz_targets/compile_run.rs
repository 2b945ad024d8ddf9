//! Arbitrary bytes as a model: whatever the front end accepts and is small enough to
//! build quickly is compiled to native code, run forward (twice, so that stateful layers
//! carry their states) and trained one step with mse. Nothing may panic: a model that
//! checks must compile, predict a finite output of its shape from a small input, and
//! train; an error is allowed only where the model's own numbers overflow (a non-finite
//! loss). Run with `cargo +nightly fuzz run compile_run` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lstmc::model::Loss;
use ndarray::{ArrayD, Dimension, IxDyn};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(model) = lstmc::Model::parse(text) else {
        return;
    };
    let spec = model.spec();
    let small = spec
        .layers
        .iter()
        .all(|l| l.units <= 48 && l.input_features <= 48)
        && spec.layers.len() <= 4
        && spec.input.time.unwrap_or(1) <= 12
        && spec.input.batch.unwrap_or(1) <= 6;
    if !small {
        return;
    }
    let batch = spec.input.batch.unwrap_or(2);
    let mut shape = vec![batch];
    if spec.input.sequence {
        shape.push(spec.input.time.unwrap_or(3));
    }
    shape.push(spec.input.features);
    let threads = 1 + data.len() % 2;
    let options = lstmc::CompileOptions {
        threads,
        loss: Some(Loss::Mse),
        ..Default::default()
    };
    let mut net = model.compile(&options).expect("a checked model compiles");
    let x = ArrayD::from_shape_fn(IxDyn(&shape), |i| {
        let k = i.as_array_view().iter().fold(0usize, |a, &d| a * 7 + d);
        ((k % 11) as f32 - 5.0) * 0.1
    });
    let y = net.predict(x.view()).expect("a compiled model predicts");
    let _ = net
        .predict(x.view())
        .expect("and predicts again (stateful layers carry on)");
    assert!(
        y.iter().all(|v| v.is_finite()),
        "{text}: non-finite output from a small input"
    );
    let target = y.mapv(|v| v * 0.5 + 0.1);
    match net.train_on_batch(x.view(), target.view()) {
        Ok((loss, _)) => assert!(loss.is_finite(), "{text}: non-finite loss returned as Ok"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("NaN") || msg.contains("inf"),
                "{text}: training failed: {msg}"
            );
        }
    }
});
