//! The `lstmc` command line. All work is in the library; this file parses
//! flags, maps errors to exit codes (0 success, 1 user error, 2 internal
//! error) and makes sure no panic trace reaches the user.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("lstmc: internal error (a bug in lstmc, please report it): {info}");
    }));
    match std::panic::catch_unwind(cli::main) {
        Ok(code) => code,
        Err(_) => ExitCode::from(2),
    }
}
