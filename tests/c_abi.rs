//! The C ABI, from C: the header is what cbindgen generates from the code; the
//! example host (`examples/c/host.c`) streams the same numbers as the Rust API,
//! linked against the static and the dynamic library; every misuse in
//! `tests/c/errors.c` gets its status and message; and `tests/c/fit.c` checks
//! `lstmc_fit` against `lstmc_train_on_batch` and `lstmc_evaluate`.

mod common;

use lstmc::{CompileOptions, Model};
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_header_is_generated_from_the_code() {
    let config = cbindgen::Config::from_file(Path::new(ROOT).join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(ROOT)
        .with_config(config)
        .generate()
        .expect("cbindgen reads the crate")
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = Path::new(ROOT).join("include/lstmc.h");
    if std::env::var_os("LSTMC_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/lstmc.h differs from what cbindgen generates from src/jit/native/capi.rs; \
         rerun with LSTMC_BLESS=1 and review the diff"
    );
    for f in [
        "lstmc_compile",
        "lstmc_predict",
        "lstmc_stream_predict",
        "lstmc_train_on_batch",
        "lstmc_evaluate",
        "lstmc_fit",
        "lstmc_reset_states",
        "lstmc_load_weights",
        "lstmc_save_weights",
        "lstmc_string_free",
    ] {
        assert!(generated.contains(&format!(" {f}(")), "{f} missing");
    }
}

/// The static and dynamic libraries, built by cargo (a test build makes only the rlib).
fn libraries() -> (PathBuf, PathBuf) {
    let files = common::cargo_build(&["--lib"], "lstmc");
    let find = |exts: &[&str]| {
        files
            .iter()
            .find(|f| {
                f.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| exts.contains(&e))
            })
            .cloned()
    };
    (
        find(&["a"]).expect("a staticlib"),
        find(&["so", "dylib"]).expect("a cdylib"),
    )
}

/// Compiles C `sources` into `exe`, linked against `lib` (static or dynamic).
fn cc(source: &str, lib: &Path, exe: &Path) {
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-std=c99", "-Wall", "-Werror", "-O1"])
        .arg(format!("-I{ROOT}/include"))
        .arg(Path::new(ROOT).join(source))
        .arg(lib)
        .arg("-o")
        .arg(exe);
    if lib.extension().is_some_and(|e| e == "a") {
        cmd.args(["-lpthread", "-ldl", "-lm"]);
    } else {
        cmd.arg(format!("-Wl,-rpath,{}", lib.parent().unwrap().display()));
    }
    let out = cmd.output().expect("a C compiler (cc)");
    assert!(
        out.status.success(),
        "cc {source}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn c_programs_built_against_both_libraries() {
    let (static_lib, dynamic_lib) = libraries();
    let dir = tempfile::tempdir().unwrap();
    let model = format!("{ROOT}/examples/butterfly.model");
    // Weights the C host loads, and what the Rust API streams with them.
    let mut net = Model::from_file(&model)
        .unwrap()
        .compile(&CompileOptions {
            seed: 5,
            ..Default::default()
        })
        .unwrap();
    let weights = dir.path().join("w.safetensors");
    net.save_weights(&weights).unwrap();
    let p = net.predictor();
    let mut stream = p.stream();
    let samples = 12;
    let want: Vec<Vec<f32>> = (0..samples)
        .map(|t| {
            let x =
                ArrayD::from_shape_fn(IxDyn(&[1, 4, 1]), |i| ((t * 4 + i[1]) % 13) as f32 / 13.0);
            p.predict_stream(&mut stream, &x)
                .unwrap()
                .y
                .iter()
                .copied()
                .collect()
        })
        .collect();
    for (kind, lib) in [("static", &static_lib), ("dynamic", &dynamic_lib)] {
        let exe = dir.path().join(format!("host-{kind}"));
        cc("examples/c/host.c", lib, &exe);
        let out = Command::new(&exe)
            .arg(&model)
            .arg(&weights)
            .arg(samples.to_string())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "host ({kind}): {stderr}");
        assert!(
            stderr.contains("wrong length: status 4") && stderr.contains("streamed 12 samples"),
            "{stderr}"
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), samples);
        for (t, (line, w)) in lines.iter().zip(&want).enumerate() {
            let got: Vec<f32> = line
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect();
            // %.9g prints every f32 exactly: the same code gives the same bits.
            assert_eq!(&got, w, "{kind} sample {t}");
        }
        for program in ["errors", "fit"] {
            let exe = dir.path().join(format!("{program}-{kind}"));
            cc(&format!("tests/c/{program}.c"), lib, &exe);
            let out = Command::new(&exe).output().unwrap();
            let report = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{program}.c ({kind}):\n{report}");
            assert!(report.contains("0 failures"), "{report}");
        }
    }
}

/// The README's C program: compiled against the static library and run; it trains
/// and predicts as the Rust API does with the same seed, and reports a wrong length.
#[test]
fn the_readme_c_program() {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let program = readme
        .split("```c\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a C block in the README");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("prog.c");
    std::fs::write(&source, program).unwrap();
    let (static_lib, _) = libraries();
    let exe = dir.path().join("prog");
    cc(source.to_str().unwrap(), &static_lib, &exe);
    let out = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");

    // The same model, seed, data and steps through the Rust API.
    let mut net = Model::parse(
        "GRU 8 input_dim=2 input_length=5\nDense 1\ncompile loss=mse optimizer=sgd learning_rate=0.1\n",
    )
    .unwrap()
    .compile(&CompileOptions {
        seed: 3,
        ..Default::default()
    })
    .unwrap();
    let x = ArrayD::from_shape_fn(IxDyn(&[3, 5, 2]), |i| {
        ((i[0] * 10 + i[1] * 2 + i[2]) % 7) as f32 / 7.0
    });
    let target = ArrayD::from_shape_vec(IxDyn(&[3, 1]), vec![1.0f32, 0.0, 1.0]).unwrap();
    let mut loss = 0.0;
    for _ in 0..10 {
        loss = net.train_on_batch(x.view(), target.view()).unwrap().0;
    }
    let y = net.predict(x.view()).unwrap();
    let want = format!(
        "loss {loss:.6}\ny {:.6} {:.6} {:.6}",
        y[[0, 0]],
        y[[1, 0]],
        y[[2, 0]]
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("refused: x has 31 elements"),
        "{stdout}"
    );
    assert_eq!(lines[1..].join("\n"), want);
}
