//! Golden tests of the printed IR: every `tests/golden/ir/NAME.model` is
//! lowered, verified and printed, and compared with `NAME.ir` (read and
//! checked by hand). `LSTMC_BLESS=1 cargo test --test golden_ir` rewrites
//! the expected files; review the diff before committing it.

use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ir")
}

fn render(model: &Path) -> String {
    let bytes = std::fs::read(model).unwrap();
    let name = format!("{}", model.file_name().unwrap().to_string_lossy());
    let spec = lstmc::front::load(&name, &bytes).unwrap_or_else(|d| panic!("{}", d.render()));
    let shapes = lstmc::ir::lower::Shapes {
        batch: spec.input.batch.unwrap_or(1),
        time: spec.input.time.unwrap_or(1),
    };
    let f = lstmc::ir::lower::lower(&spec, shapes).unwrap();
    lstmc::ir::verify::verify(&f).unwrap();
    lstmc::ir::print::print(&f, Some(&spec.source))
}

#[test]
fn printed_ir_matches_golden_files() {
    let bless = std::env::var_os("LSTMC_BLESS").is_some();
    let mut models: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "model"))
        .collect();
    models.sort();
    assert!(models.len() >= 8, "at least 8 golden models");
    let mut failures = Vec::new();
    for m in &models {
        let got = render(m);
        let expected_path = m.with_extension("ir");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}:\n--- expected\n{want}\n--- got\n{got}",
                expected_path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
