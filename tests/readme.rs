//! The README's command-line blocks stay true: every ```console block's
//! `$ lstmc ...` command is run and its output (stdout, then stderr) compared
//! with the lines written under it. (Its Rust blocks are doc tests, its C block
//! is compiled and run by `tests/c_abi.rs`.)

use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Each fenced block of `lang` in `text`, as its lines.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(l)) if l == lang => current = Some(Vec::new()),
            (Some(_), Some("")) => out.extend(current.take()),
            (Some(b), _) => b.push(line),
            _ => {}
        }
    }
    out
}

#[test]
fn console_blocks_print_what_the_readme_says() {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let blocks = blocks(&readme, "console");
    assert!(blocks.len() >= 2, "the README's console blocks");
    for block in blocks {
        let mut commands = Vec::new();
        for line in block {
            match line.strip_prefix("$ ") {
                Some(cmd) => commands.push((cmd, Vec::new())),
                None => commands
                    .last_mut()
                    .expect("a block starts with `$ `")
                    .1
                    .push(line),
            }
        }
        for (cmd, want) in commands {
            let args: Vec<&str> = cmd.split_whitespace().collect();
            assert_eq!(args[0], "lstmc", "{cmd}");
            let out = Command::new(env!("CARGO_BIN_EXE_lstmc"))
                .args(&args[1..])
                .current_dir(ROOT)
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            let got = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let got: Vec<&str> = got.trim_end().lines().collect();
            assert_eq!(got, want, "output of `{cmd}`");
        }
    }
}
