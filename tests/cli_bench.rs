//! `lstmc bench --model`: a model of the user's is timed in every phase it asks for,
//! training as its `compile` line says, on targets of its output's shape.

use std::process::Command;

/// Runs `lstmc bench` on `model` (text) with `input` and `phase`; returns the JSON lines.
fn bench(model: &str, input: &str, phase: &str) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.model");
    std::fs::write(&path, model).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lstmc"))
        .args(["bench", "--model"])
        .arg(&path)
        .args(["--input", input, "--phase", phase, "--budget", "0.01"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{model}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn a_users_model_is_timed_training_with_its_own_loss_and_optimizer() {
    let models = [
        // Categorical cross-entropy against one-hot rows, Adam.
        (
            "LSTM 8 input_dim=3 input_length=5\nDense 4 activation=softmax\ncompile loss=categorical_crossentropy optimizer=adam\n",
            "2,5,3",
        ),
        // Sparse class indices per step of a sequence output.
        (
            "GRU 6 input_dim=2 input_length=4 return_sequences\nDense 3 activation=softmax\ncompile loss=sparse_categorical_crossentropy optimizer=rmsprop\n",
            "3,4,2",
        ),
        // A stateful batch of one, binary cross-entropy, SGD.
        (
            "LSTM 4 input_dim=1 input_length=3 batch_size=1 stateful\nDense 1 activation=sigmoid\ncompile loss=binary_crossentropy optimizer=sgd\n",
            "1,3,1",
        ),
        // No `compile` line: Keras's defaults (mse, rmsprop).
        ("LSTM 5 input_dim=2 input_length=3\n", "2,3,2"),
    ];
    for (model, input) in models {
        let lines = bench(model, input, "train");
        assert_eq!(lines.len(), 1, "{model}: {lines:?}");
        let l = &lines[0];
        assert_eq!(l["workload"], "custom", "{l}");
        assert_eq!(l["phase"], "train", "{l}");
        assert!(l["median_us"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["reps"].as_u64().unwrap() >= 5, "{l}");
        let phases: Vec<String> = bench(model, input, "all")
            .iter()
            .map(|l| l["phase"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(phases, ["forward", "train"], "{model}");
    }
}
