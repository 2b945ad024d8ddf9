//! The buffers that generated code reads and writes (the arena, staged inputs,
//! weights and optimizer slots), aligned to 64 bytes.
//!
//! The host kernels and the `gemm` crate load 64 bytes at a time. A `Vec<f32>` is
//! only as aligned as the allocator makes it: a large one comes from `mmap`, 16
//! bytes past a page, so that every 512-bit load of it spans two cache lines. W2's
//! forward streams its 256 KB recurrent kernel from L2 four times a call and took
//! 15.0 µs with it so placed, 12.5 µs when the allocator happened to align it.

use aligned_vec::{AVec, ConstAlign};
use std::ops::{Deref, DerefMut};

/// Bytes of alignment: one cache line, one 512-bit vector.
const ALIGN: usize = 64;

/// A growable `f32` buffer whose first element is 64-byte aligned.
#[derive(Clone, Debug, PartialEq)]
pub struct Buf(AVec<f32, ConstAlign<ALIGN>>);

impl Default for Buf {
    fn default() -> Buf {
        Buf(AVec::new(ALIGN))
    }
}

impl Buf {
    /// An empty buffer.
    pub fn new() -> Buf {
        Buf::default()
    }

    /// `len` zeros.
    pub fn zeros(len: usize) -> Buf {
        let mut b = Buf::new();
        b.resize(len, 0.0);
        b
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[f32]) -> Buf {
        Buf(AVec::from_slice(ALIGN, values))
    }

    /// Grows or shrinks to `len` elements, new ones set to `value`.
    pub fn resize(&mut self, len: usize, value: f32) {
        self.0.resize(len, value);
    }

    /// Becomes a copy of `src`, in its own allocation while that is large enough (a
    /// snapshot taken again and again, as `Trainer::fit`'s of the weights every epoch).
    pub fn copy_from(&mut self, src: &[f32]) {
        self.0.truncate(0);
        self.0.extend_from_slice(src);
    }
}

impl Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Buf;

    #[test]
    fn buffers_start_on_a_cache_line_however_they_grow() {
        let mut b = Buf::new();
        for len in [1, 5, 100, 70_000, 3, 300_000] {
            b.resize(len, 1.0);
            assert_eq!(b.as_ptr() as usize % 64, 0, "len {len}");
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&v| v == 1.0));
        }
        let c = Buf::from_slice(&b[..7]);
        assert_eq!(c.as_ptr() as usize % 64, 0);
        assert_eq!(&c[..], &b[..7]);
        let d = c.clone();
        assert_eq!(d.as_ptr() as usize % 64, 0);
        assert_eq!(Buf::zeros(9).iter().sum::<f32>(), 0.0);
    }
}
