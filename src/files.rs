//! Reading whole files into memory, refused up front (with a message, not an abort)
//! when the machine could not hold them.

use crate::error::{Error, Result};
use std::path::Path;

/// The machine's memory in bytes, where the system says (Linux's `/proc/meminfo`).
pub fn memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses to hold `bytes` for `what` where the machine has less memory than that
/// (where it does not say how much it has, this lets everything through).
///
/// ```
/// assert!(lstmc::files::check_fits(1 << 20, "a small file").is_ok());
/// if lstmc::files::memory_bytes().is_some() {
///     let e = lstmc::files::check_fits(u64::MAX, "x.npy").unwrap_err();
///     assert!(e.to_string().contains("more than this machine's"), "{e}");
/// }
/// ```
pub fn check_fits(bytes: u64, what: &str) -> Result<()> {
    match memory_bytes() {
        Some(total) if bytes > total => Err(Error::Data(format!(
            "{what} needs {:.1} GiB of memory, more than this machine's {:.1} GiB",
            bytes as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

/// The whole file, once [`check_fits`] has let its size through.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    check_fits(len, &path.display().to_string())?;
    std::fs::read(path).map_err(|e| Error::io(path, e))
}
