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

/// However many two-pass cell kernels a function has (here 48: three LSTM(2048) layers
/// over 16 unrolled steps), they share one scratch row, so every frame stays small
/// enough for a thread's stack; frames above a page are probed page by page.
#[test]
fn frames_stay_small_however_many_kernels() {
    let text = "model big\nLSTM 2048 input_dim=8 input_length=16 batch_size=8 return_sequences\nLSTM 2048 return_sequences\nLSTM 2048\n";
    let out = asm(text, &[]);
    let frames: Vec<u64> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("subq $0x")?.strip_suffix(", %rsp"))
        .map(|hex| u64::from_str_radix(hex, 16).unwrap())
        .collect();
    assert!(!frames.is_empty());
    let largest = *frames.iter().max().unwrap();
    assert!(largest < 64 << 10, "a frame of {largest} bytes");
    if largest > 4096 {
        assert!(
            out.contains("stack_probe_loop"),
            "a large frame without probes"
        );
    }
}
