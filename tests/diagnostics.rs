//! Malformed models: every `tests/errors/NAME.model` must fail to load with
//! exactly the rendered message in `NAME.err` (read and checked by hand),
//! and `lstmc check` on it must exit 1 with that message and no panic.
//! `LSTMC_BLESS=1 cargo test --test diagnostics` rewrites the expected files.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(tests_dir().join("errors"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "model"))
        .collect();
    v.sort();
    v
}

/// The name messages use for a case: its path relative to tests/.
fn display_name(p: &Path) -> String {
    format!("errors/{}", p.file_name().unwrap().to_string_lossy())
}

#[test]
fn every_malformed_model_renders_its_expected_message() {
    let bless = std::env::var_os("LSTMC_BLESS").is_some();
    let cases = cases();
    assert!(
        cases.len() >= 40,
        "at least 40 malformed models, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let bytes = std::fs::read(case).unwrap();
        let got = match lstmc::front::load(&display_name(case), &bytes) {
            Ok(_) => "(loaded without error)\n".to_string(),
            Err(d) => d.render(),
        };
        let expected = case.with_extension("err");
        if bless {
            std::fs::write(&expected, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}\n--- expected\n{want}--- got\n{got}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lstmc_check_exits_1_with_the_message_on_every_malformed_model() {
    for case in cases() {
        let out = Command::new(env!("CARGO_BIN_EXE_lstmc"))
            .current_dir(tests_dir())
            .args(["check", &display_name(&case)])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: exit code; stderr:\n{stderr}",
            case.display()
        );
        assert!(
            out.stdout.is_empty(),
            "{}: nothing on stdout",
            case.display()
        );
        let want = std::fs::read_to_string(case.with_extension("err")).unwrap();
        assert_eq!(stderr, want, "{}", case.display());
        assert!(!stderr.contains("panicked"), "{}", case.display());
    }
}
