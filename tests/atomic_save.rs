//! Weights are written atomically: a process killed while saving leaves the
//! previous file intact (or the new one whole), never a part of one. The
//! child trains one step of a model with 2.6M parameters (a 10 MB file) and
//! saves over an existing file; it is killed as soon as the save is seen to start.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn killing_a_save_leaves_the_previous_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("m.model"),
        "LSTM 800 input_dim=4 input_length=2\nDense 1\ncompile loss=mse optimizer=sgd\n",
    )
    .unwrap();
    let spec = lstmc::front::load("m.model", &std::fs::read(p.join("m.model")).unwrap()).unwrap();
    use ndarray_npy::WriteNpyExt;
    ndarray::Array3::<f32>::zeros((1, 2, 4))
        .write_npy(std::fs::File::create(p.join("x.npy")).unwrap())
        .unwrap();
    ndarray::Array2::<f32>::ones((1, 1))
        .write_npy(std::fs::File::create(p.join("y.npy")).unwrap())
        .unwrap();
    let old = lstmc::weights::Weights::init(&spec, 42);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_lstmc"))
            .current_dir(p)
            .args([
                "run",
                "m.model",
                "--x",
                "x.npy",
                "--y",
                "y.npy",
                "--epochs",
                "1",
                "--quiet",
                "--save-weights",
                "w.safetensors",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long a whole run takes here. (Saved weights are float32: compare files as loaded.)
    old.save(&p.join("w.safetensors")).unwrap();
    let old_file = lstmc::weights::Weights::load(&spec, &p.join("w.safetensors")).unwrap();
    let t = Instant::now();
    assert!(run().wait().unwrap().success());
    let whole = t.elapsed();
    let new = lstmc::weights::Weights::load(&spec, &p.join("w.safetensors")).unwrap();
    assert_ne!(new, old_file);
    // Kill the moment a save is visibly under way: a temporary file appears beside the
    // target, or the target itself changes.
    let target = p.join("w.safetensors");
    let mut killed_during_save = 0;
    for i in 1..=5 {
        old.save(&target).unwrap();
        let before = std::fs::metadata(&target).unwrap().modified().unwrap();
        let mut child = run();
        let deadline = Instant::now() + whole * 4;
        loop {
            let saving = std::fs::read_dir(p).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".lstmc-")
            }) || std::fs::metadata(&target)
                .map(|m| m.modified().unwrap() != before)
                .unwrap_or(true);
            if saving {
                let _ = child.kill();
                killed_during_save += 1;
                break;
            }
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        let _ = child.wait();
        let now = lstmc::weights::Weights::load(&spec, &target)
            .unwrap_or_else(|e| panic!("kill {i}: the weights file is damaged: {e}"));
        assert!(
            now == old_file || now == new,
            "kill {i}: the file is neither the old weights nor the new"
        );
    }
    assert!(killed_during_save > 0, "no kill landed during a save");
}

/// A saved file gets the permissions a plain create gives (a temporary file's are the
/// owner's alone: weights written for a server to read were unreadable to it), and a
/// replaced file keeps its own.
#[cfg(unix)]
#[test]
fn a_saved_file_has_the_permissions_of_a_created_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let plain = dir.path().join("plain");
    std::fs::File::create(&plain).unwrap();
    let saved = dir.path().join("w.safetensors");
    lstmc::weights::write_atomic(&saved, b"first").unwrap();
    assert_eq!(mode(&saved), mode(&plain));
    std::fs::set_permissions(&saved, std::fs::Permissions::from_mode(0o640)).unwrap();
    lstmc::weights::write_atomic(&saved, b"second").unwrap();
    assert_eq!(mode(&saved), 0o640);
    assert_eq!(std::fs::read(&saved).unwrap(), b"second");
}
