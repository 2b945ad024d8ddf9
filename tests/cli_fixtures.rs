//! The Keras fixtures end to end through the command line: the fixture's
//! model written as a `.model` file, its weights as safetensors, its inputs as
//! `.npy`; `lstmc run --predict` writes `.npy` predictions that must equal
//! Keras's to f32 precision. Stateful cases run all their batches in one
//! call, as Keras's `predict(x, batch_size=B)` does.

mod common;

use common::*;
use ndarray::{concatenate, ArrayD, Axis};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use std::process::Command;

fn lstmc(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lstmc"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_fixture_predicts_through_the_cli_to_f32_precision() {
    let dir = tempfile::tempdir().unwrap();
    for name in fixture_names() {
        let fx = load(&name);
        let spec = fx.spec();
        std::fs::write(dir.path().join("m.model"), fx.model_text()).unwrap();
        fx.weights(&spec)
            .save(&dir.path().join("w.safetensors"))
            .unwrap();
        let xs: Vec<ArrayD<f64>> = fx.batches().iter().map(|b| array(&b["x"])).collect();
        let ys: Vec<ArrayD<f64>> = fx.batches().iter().map(|b| array(&b["y"])).collect();
        let x = concatenate(Axis(0), &xs.iter().map(|a| a.view()).collect::<Vec<_>>()).unwrap();
        let want = concatenate(Axis(0), &ys.iter().map(|a| a.view()).collect::<Vec<_>>()).unwrap();
        // Inputs as float32, as a user would save them from NumPy.
        x.mapv(|v| v as f32)
            .write_npy(std::fs::File::create(dir.path().join("x.npy")).unwrap())
            .unwrap();
        let batch = fx.json["batch_size"].to_string();
        let out = lstmc(
            &[
                "run",
                "m.model",
                "--weights",
                "w.safetensors",
                "--predict",
                "x.npy",
                "--output",
                "y.npy",
                "--batch-size",
                &batch,
                "--quiet",
            ],
            dir.path(),
        );
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = ArrayD::<f32>::read_npy(std::fs::File::open(dir.path().join("y.npy")).unwrap())
            .unwrap();
        assert_close(
            &format!("{name} via CLI"),
            &got.mapv(|v| v as f64),
            &want,
            2e-6,
        );
    }
}

#[test]
fn weights_files_that_do_not_fit_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let fx = load("lstm_stacked");
    let spec = fx.spec();
    std::fs::write(dir.path().join("m.model"), fx.model_text()).unwrap();
    let mut w = fx.weights(&spec);
    let x = ArrayD::<f32>::zeros(ndarray::IxDyn(&[
        1,
        spec.input.time.unwrap(),
        spec.input.features,
    ]));
    x.write_npy(std::fs::File::create(dir.path().join("x.npy")).unwrap())
        .unwrap();
    let run = |w: &lstmc::weights::Weights| {
        std::fs::write(
            dir.path().join("w.safetensors"),
            w.to_safetensors().unwrap(),
        )
        .unwrap();
        let out = lstmc(
            &[
                "run",
                "m.model",
                "--weights",
                "w.safetensors",
                "--predict",
                "x.npy",
            ],
            dir.path(),
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Missing.
    let removed = w.tensors.remove(1);
    let (code, err) = run(&w);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("missing tensor `layers.0.recurrent_kernel` (shape [8, 32], LSTM lstm)"),
        "{err}"
    );
    // Extra.
    w.tensors.insert(1, removed);
    w.tensors.push((
        "layers.7.kernel".into(),
        ArrayD::zeros(ndarray::IxDyn(&[2, 2])),
    ));
    let (code, err) = run(&w);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("unexpected tensor `layers.7.kernel`: the model has no such weight"),
        "{err}"
    );
    // Misshapen.
    w.tensors.pop();
    w.tensors[0].1 = ArrayD::zeros(ndarray::IxDyn(&[2, 32]));
    let (code, err) = run(&w);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tensor `layers.0.kernel` has shape [2, 32], but LSTM lstm needs [3, 32]"),
        "{err}"
    );
}

#[test]
fn bad_arrays_and_batches_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fx = load("seed_lstm3_stateful");
    std::fs::write(dir.path().join("m.model"), fx.model_text()).unwrap();
    let p = dir.path();
    // Integer dtype.
    ndarray::Array3::<i32>::zeros((1, 4, 1))
        .write_npy(std::fs::File::create(p.join("i.npy")).unwrap())
        .unwrap();
    let out = lstmc(&["run", "m.model", "--predict", "i.npy"], p);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("arrays must be float32 or float64, found dtype"));
    // Wrong feature count.
    ndarray::Array3::<f32>::zeros((1, 4, 2))
        .write_npy(std::fs::File::create(p.join("f.npy")).unwrap())
        .unwrap();
    let out = lstmc(&["run", "m.model", "--predict", "f.npy"], p);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("takes inputs shaped (batch, 4, 1); got [1, 4, 2]"));
    // NaN.
    let mut nan = ndarray::Array3::<f32>::zeros((1, 4, 1));
    nan[[0, 2, 0]] = f32::NAN;
    nan.write_npy(std::fs::File::create(p.join("n.npy")).unwrap())
        .unwrap();
    let out = lstmc(&["run", "m.model", "--predict", "n.npy"], p);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds NaN at flat index 2"));
    // A stateful model of batch 1 asked to run batches of 2.
    ndarray::Array3::<f32>::zeros((4, 4, 1))
        .write_npy(std::fs::File::create(p.join("x.npy")).unwrap())
        .unwrap();
    let out = lstmc(
        &["run", "m.model", "--predict", "x.npy", "--batch-size", "2"],
        p,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is stateful with batch size 1") && err.contains("--batch-size 2"),
        "{err}"
    );
    // Not a multiple of the stateful batch size.
    let fx2 = load("lstm_stateful_batch2");
    std::fs::write(p.join("m2.model"), fx2.model_text()).unwrap();
    ndarray::Array3::<f32>::zeros((3, fx2.spec().input.time.unwrap(), fx2.spec().input.features))
        .write_npy(std::fs::File::create(p.join("x3.npy")).unwrap())
        .unwrap();
    let out = lstmc(&["run", "m2.model", "--predict", "x3.npy"], p);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("the number of samples (3) must be a multiple of it"));
    // Missing file.
    let out = lstmc(&["run", "m.model", "--predict", "absent.npy"], p);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.npy"));
}
