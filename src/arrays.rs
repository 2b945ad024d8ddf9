//! NumPy arrays on disk: `.npy` (little- or big-endian float32/float64, read
//! as f64) and `.npz` archives of them; predictions written as float32 `.npy`.
//! Anything else is refused with a message saying what was found.

use crate::error::{Error, Result};
use ndarray::ArrayD;
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpyExt, WriteNpyExt};
use std::io::{Read, Seek};
use std::path::Path;

/// Reads an array from `.npy`, or from `.npz` (the entry `name`, or the only one).
pub fn read(path: &Path, name: Option<&str>) -> Result<ArrayD<f64>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let what = path.display().to_string();
    let is_npz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    let a = if is_npz {
        let mut npz = NpzReader::new(file)
            .map_err(|e| Error::Data(format!("{what}: not a readable .npz archive: {e}")))?;
        let names = npz
            .names()
            .map_err(|e| Error::Data(format!("{what}: {e}")))?;
        let entry = match name {
            Some(n) => names
                .iter()
                .find(|e| e.as_str() == n || e.strip_suffix(".npy") == Some(n))
                .cloned()
                .ok_or_else(|| {
                    Error::Data(format!(
                        "{what} has no array `{n}`; it has: {}",
                        names.join(", ")
                    ))
                })?,
            None if names.len() == 1 => names[0].clone(),
            None => {
                return Err(Error::Data(format!(
                    "{what} holds {} arrays ({}); name the one to use",
                    names.len(),
                    names.join(", ")
                )))
            }
        };
        let f64_try: std::result::Result<ArrayD<f64>, _> = npz.by_name(&entry);
        match f64_try {
            Ok(a) => a,
            Err(_) => {
                let a32: ArrayD<f32> = npz.by_name(&entry).map_err(|e| {
                    Error::Data(format!(
                        "{what}[{entry}]: {}",
                        npy_error_text(&e.to_string())
                    ))
                })?;
                a32.mapv(|v| v as f64)
            }
        }
    } else {
        read_npy(file, &what)?
    };
    if let Some((i, v)) = a.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Data(format!(
            "{what}: holds {v} at flat index {i}; inputs must be finite"
        )));
    }
    Ok(a)
}

fn read_npy<R: Read + Seek>(mut r: R, what: &str) -> Result<ArrayD<f64>> {
    match ArrayD::<f64>::read_npy(&mut r) {
        Ok(a) => Ok(a),
        Err(ReadNpyError::WrongDescriptor(_)) => {
            r.rewind().map_err(|e| Error::io(what, e))?;
            match ArrayD::<f32>::read_npy(&mut r) {
                Ok(a) => Ok(a.mapv(|v| v as f64)),
                Err(ReadNpyError::WrongDescriptor(d)) => Err(Error::Data(format!(
                    "{what}: arrays must be float32 or float64, found dtype {d}"
                ))),
                Err(e) => Err(Error::Data(format!(
                    "{what}: {}",
                    npy_error_text(&e.to_string())
                ))),
            }
        }
        Err(e) => Err(Error::Data(format!(
            "{what}: {}",
            npy_error_text(&e.to_string())
        ))),
    }
}

fn npy_error_text(e: &str) -> String {
    format!("not a readable .npy array ({e})")
}

/// Writes an array as float32 `.npy`, atomically.
pub fn write_f32(path: &Path, a: &ArrayD<f64>) -> Result<()> {
    let a32 = a.mapv(|v| v as f32);
    let mut bytes = Vec::new();
    a32.as_standard_layout()
        .write_npy(&mut bytes)
        .map_err(|e| Error::Internal(format!("npy encoding: {e}")))?;
    crate::weights::write_atomic(path, &bytes)
}
