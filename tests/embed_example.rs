//! `examples/embed.rs` run as a user runs it: with no weights yet it trains the
//! model and saves them, later runs load them; either way it streams the song
//! through a stateful model one window at a time, and every note and probability
//! it prints is what the `Network` API predicts, batch by batch, with the same
//! weights and states carried the same way.

mod common;

use lstmc::data::{encode_note, note_code, note_name, BUTTERFLY};
use lstmc::{CompileOptions, Model};
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn embed_exe() -> PathBuf {
    common::cargo_build(&["--example", "embed"], "embed")
        .into_iter()
        .find(|f| f.file_stem().is_some_and(|s| s == "embed") && f.extension().is_none())
        .expect("the embed example's executable")
}

fn run(exe: &Path, model: &Path, weights: &Path) -> Output {
    Command::new(exe).arg(model).arg(weights).output().unwrap()
}

/// The lines the example should print, from `Network::predict` on batches of one.
fn expected(model: &Path, weights: &Path, features: usize) -> Vec<(String, String, f32)> {
    let mut net = Model::from_file(model)
        .unwrap()
        .compile(&CompileOptions::default())
        .unwrap();
    net.load_weights(weights).unwrap();
    net.reset_states();
    let window = 4;
    let mut codes: Vec<usize> = BUTTERFLY[..window]
        .iter()
        .map(|n| note_code(n).unwrap())
        .collect();
    let mut lines = Vec::new();
    for step in 0..BUTTERFLY.len() - window {
        let xs: Vec<f32> = codes[step..step + window]
            .iter()
            .flat_map(|&c| encode_note(c, features))
            .map(|v| v as f32)
            .collect();
        let x = ArrayD::from_shape_vec(IxDyn(&[1, window, features]), xs).unwrap();
        let y = net.predict(x.view()).unwrap();
        let (next, p) = y
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        let shown: Vec<String> = codes[step..step + window]
            .iter()
            .map(|&c| note_name(c).unwrap())
            .collect();
        lines.push((
            format!("{step}: {}", shown.join(" ")),
            note_name(next).unwrap(),
            p,
        ));
        codes.push(next);
    }
    lines
}

fn check_output(out: &Output, want: &[(String, String, f32)]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), want.len() + 2, "{stdout}");
    for (line, (head, note, p)) in lines.iter().zip(want) {
        let (got_head, rest) = line.split_once(" -> ").expect("step: window -> note (p)");
        let (got_note, got_p) = rest.split_once(' ').unwrap();
        let got_p: f32 = got_p.trim_matches(['(', ')']).parse().unwrap();
        assert_eq!(
            (got_head, got_note),
            (head.as_str(), note.as_str()),
            "{line}"
        );
        assert!((got_p - p).abs() <= 6e-4, "{line}: probability {p}");
    }
    let song: Vec<&str> = BUTTERFLY[..4]
        .iter()
        .copied()
        .chain(want.iter().map(|w| w.1.as_str()))
        .collect();
    assert_eq!(lines[want.len()], format!("song: {}", song.join(" ")));
    let right = song[4..]
        .iter()
        .zip(&BUTTERFLY[4..])
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(
        lines[want.len() + 1],
        format!("notes generated right: {right} of {}", want.len())
    );
}

#[test]
fn embed_trains_saves_then_loads_and_streams_the_song() {
    let exe = embed_exe();
    let dir = tempfile::tempdir().unwrap();
    for (file, features) in [("butterfly.model", 1), ("butterfly_2features.model", 2)] {
        // The tutorial's stateful model, trained 3 epochs instead of 2000.
        let source = std::fs::read_to_string(format!("{ROOT}/examples/{file}")).unwrap();
        assert!(source.contains("epochs=2000"), "{file}");
        let model = dir.path().join(file);
        std::fs::write(&model, source.replace("epochs=2000", "epochs=3")).unwrap();
        let weights = dir.path().join(format!("{file}.safetensors"));

        let first = run(&exe, &model, &weights);
        let stderr = String::from_utf8_lossy(&first.stderr);
        assert!(first.status.success(), "{stderr}");
        assert!(
            stderr.contains("training 3 epochs") && stderr.contains("saved"),
            "{stderr}"
        );
        let want = expected(&model, &weights, features);
        check_output(&first, &want);

        let second = run(&exe, &model, &weights);
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(second.status.success(), "{stderr}");
        assert!(
            stderr.contains("loaded") && !stderr.contains("training"),
            "{stderr}"
        );
        assert_eq!(first.stdout, second.stdout);
    }
}

#[test]
fn embed_explains_what_it_cannot_do() {
    let exe = embed_exe();
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("none.safetensors");
    // No weights and nothing to train on.
    let model = dir.path().join("nodata.model");
    std::fs::write(
        &model,
        "LSTM 4 input_dim=1 input_length=4 stateful batch_size=1\nDense 12 activation=softmax\n",
    )
    .unwrap();
    let out = run(&exe, &model, &weights);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no data line"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Weights, but a model that does not take notes in.
    let model = dir.path().join("regress.model");
    std::fs::write(&model, "LSTM 4 input_dim=3 input_length=4\nDense 1\n").unwrap();
    Model::from_file(&model)
        .unwrap()
        .compile(&CompileOptions::default())
        .unwrap()
        .save_weights(&weights)
        .unwrap();
    let out = run(&exe, &model, &weights);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not play the song"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A model file that does not parse: the diagnostic, with line and column.
    std::fs::write(&model, "LSTM 4 input_dim=3 retrun_sequences\n").unwrap();
    let out = run(&exe, &model, &weights);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("return_sequences") && stderr.contains(":1:"),
        "{stderr}"
    );
}
