//! `lstmc asm` prints the Cranelift IR and the machine code of every function it
//! generates: the forward function, the kernels outlined for threads, and with
//! `--train` the training step.

mod common;

use common::lstmc_ok;

/// `lstmc asm` on `text` with `args`: its standard output.
fn asm(text: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.model"), text).unwrap();
    lstmc_ok(&[&["asm", "m.model"][..], args].concat(), dir.path())
}

/// The names of the functions in the Cranelift IR part (`function u0:N(...)`), and of
/// the machine code sections (`; function u0:N`), in order.
fn functions(out: &str) -> (Vec<String>, Vec<String>) {
    let name = |l: &str| l.split('(').next().unwrap().trim().to_string();
    let ir = out
        .lines()
        .filter_map(|l| l.strip_prefix("function "))
        .map(name)
        .collect();
    let machine = out
        .lines()
        .filter_map(|l| l.strip_prefix("; function "))
        .map(name)
        .collect();
    (ir, machine)
}

const MODEL: &str =
    "model m\nLSTM 256 input_dim=8 input_length=6 batch_size=16\ncompile loss=mse optimizer=sgd\n";

#[test]
fn asm_prints_every_generated_function() {
    // One thread: the forward function alone, as IR and as machine code.
    let one = asm(MODEL, &[]);
    assert!(one.starts_with("; forward function of model `m`, batch 16, 6 steps, 1 thread(s)"));
    let (ir, machine) = functions(&one);
    assert_eq!(ir, vec!["u0:0"]);
    assert_eq!(machine, ir);
    assert!(one.contains("retq"), "machine code has no return");
    // Two threads: the cell kernels (16 rows × 256 units) are outlined, each printed.
    let two = asm(MODEL, &["--threads", "2"]);
    let (ir2, machine2) = functions(&two);
    assert!(ir2.len() >= 2, "no outlined kernel printed:\n{two}");
    assert_eq!(machine2, ir2);
    assert!(two.contains("function u0:0(i64, i64)"));
    assert!(ir2[1..]
        .iter()
        .all(|f| two.contains(&format!("function {f}(i64, i64, i64)"))));
    // The training step: larger than the forward function, and its outlined kernels.
    let train = asm(MODEL, &["--train", "--threads", "2"]);
    assert!(train.starts_with("; training step of model `m`"));
    let (ir3, machine3) = functions(&train);
    assert_eq!(machine3, ir3);
    assert!(ir3.len() > ir2.len(), "backward kernels missing:\n{train}");
    assert!(train.len() > two.len());
}
