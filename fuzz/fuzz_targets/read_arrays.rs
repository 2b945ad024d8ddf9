//! Arbitrary bytes as a NumPy file: read as `.npy`, and as `.npz` (the bytes as an
//! archive, and inside a stored archive entry), as `lstmc run` reads data. Nothing may
//! panic or abort: a header that declares more than the file holds, or more than the
//! machine's memory, must be refused before anything is allocated for it. Run with
//! `cargo +nightly fuzz run read_arrays` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("lstmc-fuzz-arrays-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let npy = dir.join("x.npy");
    std::fs::write(&npy, data).unwrap();
    let _ = lstmc::arrays::read(&npy, Some("x"));
    let npz = dir.join("raw.npz");
    std::fs::write(&npz, data).unwrap();
    let _ = lstmc::arrays::read(&npz, None);
    let wrapped = dir.join("x.npz");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wrapped).unwrap());
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored);
    zip.start_file("x.npy", stored).unwrap();
    zip.write_all(data).unwrap();
    zip.finish().unwrap();
    let _ = lstmc::arrays::read(&wrapped, Some("x"));
});
