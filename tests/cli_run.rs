//! `lstmc run`'s flags and outputs checked before training starts: a bad count or
//! learning rate, a place the weights or predictions cannot be written, inputs to
//! predict that cannot be read or do not fit the model. Each exits 1 with a message
//! that names the problem, before the first epoch (training would be lost otherwise).

mod common;

use common::lstmc_ok;
use std::process::Command;

/// A float32 `.npy` file of `shape` holding `values`.
fn npy(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| format!("{d}, ")).collect();
    let header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        dims.concat().trim_end()
    );
    let pad = 64 - (10 + header.len() + 1) % 64;
    let header = format!("{header}{}\n", " ".repeat(pad));
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    values.iter().for_each(|v| b.extend(v.to_le_bytes()));
    b
}

#[test]
fn what_training_would_be_lost_to_is_refused_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("m.model"),
        "LSTM 4 input_dim=1 input_length=3\nDense 1\ncompile loss=mse optimizer=sgd\n\
         fit epochs=2\ndata csv=\"s.csv\" window=3\n",
    )
    .unwrap();
    std::fs::write(d.join("s.csv"), "1\n2\n3\n4\n5\n6\n7\n").unwrap();
    // An input of the wrong shape to predict: 2 features where the model takes 1.
    std::fs::write(d.join("wide.npy"), npy(&[1, 3, 2], &[0.0; 6])).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--epochs", "0"],
            "'--epochs <EPOCHS>': must be at least 1",
        ),
        (
            &["--batch-size", "0"],
            "'--batch-size <BATCH_SIZE>': must be at least 1",
        ),
        (&["--batch-size", "two"], "`two` is not a whole number"),
        (
            &["--learning-rate", "-0.1"],
            "must be a finite number above 0, not -0.1",
        ),
        (
            &["--learning-rate", "nan"],
            "must be a finite number above 0, not NaN",
        ),
        (
            &["--save-weights", "missing/w.safetensors"],
            "missing/w.safetensors: cannot be written: the folder missing does not exist",
        ),
        (&["--save-weights", "."], ".: is a folder; give a file name"),
        (&["--predict", "none.npy"], "none.npy: "),
        (
            &["--predict", "wide.npy"],
            "wide.npy: model `m` takes inputs shaped (batch, 3, 1); got [1, 3, 2]",
        ),
        (
            &["--predict", "wide.npy", "--output", "missing/y.npy"],
            "missing/y.npy: cannot be written: the folder missing does not exist",
        ),
    ];
    for (flags, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_lstmc"))
            .current_dir(d)
            .arg("run")
            .arg("m.model")
            .args(*flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {stderr}");
        assert!(stderr.contains(want), "{flags:?}: {stderr}");
        assert!(
            !stderr.contains("training `m`"),
            "{flags:?} trained: {stderr}"
        );
    }
    // A stateful model predicts whole batches: 3 samples in batches of 2 are refused
    // before training.
    std::fs::write(
        d.join("st.model"),
        "LSTM 4 input_dim=1 input_length=3 batch_size=2 stateful\nDense 1\n\
         compile loss=mse optimizer=sgd\nfit epochs=2 batch_size=2\ndata csv=\"s.csv\" window=3\n",
    )
    .unwrap();
    std::fs::write(d.join("three.npy"), npy(&[3, 3, 1], &[0.0; 9])).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lstmc"))
        .current_dir(d)
        .args(["run", "st.model", "--predict", "three.npy"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("three.npy: model `st` is stateful with batch size 2: the number of samples (3) must be a multiple of it"),
        "{stderr}"
    );
    assert!(!stderr.contains("training `st`"), "trained: {stderr}");
    // The same run with good flags trains and writes the weights.
    lstmc_ok(
        &[
            "run",
            "m.model",
            "--save-weights",
            "w.safetensors",
            "--quiet",
        ],
        d,
    );
    assert!(d.join("w.safetensors").is_file());
    // No probe or temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".lstmc-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The `data` line's `predict=` names inputs to predict after training, relative to the
/// model file (it was read and then ignored); `--predict` overrides it.
#[test]
fn the_data_lines_predict_inputs_are_predicted() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("m.model"),
        "Dense 1 input_dim=2 use_bias=false kernel_initializer=ones\n\
         data predict=\"p.npy\"\n",
    )
    .unwrap();
    std::fs::write(sub.join("p.npy"), npy(&[3, 2], &[1., 2., 3., 4., 5., 6.])).unwrap();
    std::fs::write(dir.path().join("q.npy"), npy(&[1, 2], &[10., 20.])).unwrap();
    let run = |extra: &[&str]| {
        let args = [&["run", "sub/m.model", "--json"], extra].concat();
        let out = lstmc_ok(&args, dir.path());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let data: Vec<f64> = v["predictions"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        data
    };
    // A kernel of ones sums each row.
    assert_eq!(run(&[]), [3.0, 7.0, 11.0]);
    assert_eq!(run(&["--predict", "q.npy"]), [30.0]);
}
