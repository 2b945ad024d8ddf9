//! NumPy arrays on disk: `.npy` (little- or big-endian float32/float64, read
//! as f64) and `.npz` archives of them; predictions written as float32 `.npy`.
//! Anything else is refused with a message saying what was found.

use crate::error::{Error, Result};
use ndarray::ArrayD;
use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};
use std::io::{Read, Seek};
use std::path::Path;

/// A reader that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Reads an `.npy` header from `r` (of `len` bytes in all) and checks the data it
/// declares before the reader allocates for it: no more bytes than follow the header (a
/// header that claims more is refused, not trusted), and no more than the machine's
/// memory holds, as the file's own type and as f64. Returns whether its elements are 8
/// bytes wide (then it is read as f64, else as f32); a type other than a plain number
/// (`<f4`, `>f8`, ...) is left to the reader, which refuses it before it allocates.
fn check_header<R: Read>(r: R, len: u64, what: &str) -> Result<bool> {
    let mut counted = Counted { inner: r, bytes: 0 };
    let header = Header::from_reader(&mut counted)
        .map_err(|e| Error::Data(format!("{what}: {}", npy_error_text(&e.to_string()))))?;
    let available = len.saturating_sub(counted.bytes);
    let descr = header.type_descriptor.to_string();
    let digits: String = descr
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    let Ok(item) = digits.parse::<u64>() else {
        return Ok(false);
    };
    let shape = &header.shape;
    let too_big = || {
        Error::Data(format!(
            "{what}: its header declares an array of shape {shape:?}, more elements than any machine holds"
        ))
    };
    let elements = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .ok_or_else(too_big)?;
    let bytes = elements.checked_mul(item).ok_or_else(too_big)?;
    if bytes > available {
        return Err(Error::Data(format!(
            "{what}: its header declares {elements} elements of {descr} (shape {shape:?}, {bytes} bytes), \
             but the file holds at most {available} bytes; it is cut short or its header is wrong"
        )));
    }
    let need = elements.checked_mul(item + 8).ok_or_else(too_big)?;
    crate::files::check_fits(need, &format!("{what} (shape {shape:?} of {descr})"))?;
    Ok(item == 8)
}

/// The most bytes that one byte of a deflate stream can inflate to: a 258-byte match
/// coded in as few bits as deflate allows (zlib's `deflateBound` notes the 1032:1 limit).
const MAX_INFLATE: u64 = 1032;

/// Reads an array from `.npy`, or from `.npz` (the entry `name`, or the only one).
pub fn read(path: &Path, name: Option<&str>) -> Result<ArrayD<f64>> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let what = path.display().to_string();
    let is_npz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    let a = if is_npz {
        let archive_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut zip = zip::ZipArchive::new(&file)
            .map_err(|e| Error::Data(format!("{what}: not a readable .npz archive: {e}")))?;
        // NumPy names the entries `x.npy`; an array is named without the suffix.
        let names: Vec<(String, usize)> = (0..zip.len())
            .filter_map(|i| {
                let full = zip.name_for_index(i)?;
                Some((full.strip_suffix(".npy").unwrap_or(full).to_owned(), i))
            })
            .collect();
        let listed = || {
            let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
            names.join(", ")
        };
        let (entry, index) = match name {
            Some(n) => names.iter().find(|(e, _)| e == n).cloned().ok_or_else(|| {
                Error::Data(format!("{what} has no array `{n}`; it has: {}", listed()))
            })?,
            None if names.len() == 1 => names[0].clone(),
            None => {
                return Err(Error::Data(format!(
                    "{what} holds {} arrays ({}); name the one to use",
                    names.len(),
                    listed()
                )))
            }
        };
        let what = format!("{what}[{entry}]");
        fn open<'a, R: Read + Seek>(
            zip: &'a mut zip::ZipArchive<R>,
            index: usize,
            what: &str,
        ) -> Result<zip::read::ZipFile<'a, R>> {
            zip.by_index(index)
                .map_err(|e| Error::Data(format!("{what}: {e}")))
        }
        let mut data = open(&mut zip, index, &what)?;
        // A stored entry's bytes are in the archive: its directory may claim more. A
        // deflated one inflates to at most `MAX_INFLATE` times its compressed bytes, so a
        // directory that claims more (and a header to match) is refused before the reader
        // allocates what they declare.
        let size = match data.compression() {
            zip::CompressionMethod::Stored => data.size().min(archive_len),
            _ => data
                .size()
                .min(data.compressed_size().saturating_mul(MAX_INFLATE)),
        };
        let wide = check_header(&mut data, size, &what)?;
        drop(data);
        let a = read_npy(open(&mut zip, index, &what)?, wide, &what)?;
        a
    } else {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let wide = check_header(&mut file, len, &what)?;
        file.rewind().map_err(|e| Error::io(path, e))?;
        read_npy(file, wide, &what)?
    };
    if let Some((i, v)) = a.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Data(format!(
            "{what}: holds {v} at flat index {i}; inputs must be finite"
        )));
    }
    Ok(a)
}

/// Reads an `.npy` stream as f64 (`wide`) or as f32, which it converts: a header of
/// another type is refused with the type named.
fn read_npy<R: Read>(r: R, wide: bool, what: &str) -> Result<ArrayD<f64>> {
    let read = if wide {
        ArrayD::<f64>::read_npy(r)
    } else {
        ArrayD::<f32>::read_npy(r).map(|a| a.mapv(f64::from))
    };
    read.map_err(|e| match e {
        ReadNpyError::WrongDescriptor(d) => Error::Data(format!(
            "{what}: arrays must be float32 or float64, found dtype {d}"
        )),
        e => Error::Data(format!("{what}: {}", npy_error_text(&e.to_string()))),
    })
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
