//! Transposes on the host (`lstmc_transpose`): the recurrent kernel that a training
//! step's backward loop reads as `Uᵀ` ([`crate::passes`]' `transpose`), and the
//! column-major scratch of a product written column by column into its block
//! ([`super::Product`]).

use super::simd::{Isa, Simd, VecKernel};

/// `dst = srcᵀ`: row `r` of `src` (`rows × cols`, rows `src_stride` elements apart)
/// becomes column `r` of `dst` (`cols × rows`, rows `dst_stride` apart). With host
/// vectors, [`Transpose`] gathers each column of a band of rows into a vector stored
/// whole; the rest goes by tiles ([`transpose_tiles`]). Generated element by element,
/// column after column, W3's 256×1024 recurrent kernel took 0.42–0.44 ms a training
/// step on the Intel host of 2026-12-06 (2.6% of the step at two threads), by tiles of
/// scalars still 0.31–0.36 ms, gathered 0.08–0.09 ms (`--profile`): the whole step
/// 1.5–3% faster (four alternating pairs at one thread and at two).
pub(super) extern "C" fn lstmc_transpose(
    src: *const f32,
    src_stride: u64,
    dst: *mut f32,
    dst_stride: u64,
    rows: u64,
    cols: u64,
) {
    let (rows, cols) = (rows as usize, cols as usize);
    let (ss, ds) = (src_stride as usize, dst_stride as usize);
    if rows == 0 || cols == 0 {
        return;
    }
    // SAFETY: called by generated code with pointers and sizes from a bounds-checked plan;
    // the source and the transpose are distinct slots.
    let (src, dst) = unsafe {
        (
            std::slice::from_raw_parts(src, (rows - 1) * ss + cols),
            std::slice::from_raw_parts_mut(dst, (cols - 1) * ds + rows),
        )
    };
    transpose(Isa::detect(), src, ss, dst, ds, rows, cols);
}

/// [`lstmc_transpose`] on slices, with `isa`'s vectors (this CPU's, if any): `src` holds
/// `rows` rows of `cols` (`ss` apart), `dst` `cols` rows of `rows` (`ds` apart).
fn transpose(
    isa: Option<Isa>,
    src: &[f32],
    ss: usize,
    dst: &mut [f32],
    ds: usize,
    rows: usize,
    cols: usize,
) {
    let mut done = 0;
    if let Some(isa) = isa {
        // A gather's offsets are 32-bit: `LANES` rows apart must fit.
        if ss
            .checked_mul(16)
            .is_some_and(|span| span <= i32::MAX as usize)
        {
            let t = Transpose {
                src,
                ss,
                dst: dst.as_mut_ptr(),
                ds,
                rows,
                cols,
            };
            // SAFETY: `isa` is this CPU's; `dst` holds `cols` rows of `rows`, `ds` apart.
            done = unsafe { isa.run(t) };
        }
    }
    if done < rows {
        transpose_tiles(
            &src[done * ss..],
            ss,
            &mut dst[done..],
            ds,
            rows - done,
            cols,
        );
    }
}

/// The transpose of `src` (`rows × cols`, rows `ss` apart) to `dst` (`cols` rows of
/// `rows`, `ds` apart) by bands of a vector's rows: each column of a band gathered into
/// one vector, stored whole into its row of `dst`. A band's rows are read along, line
/// by line. `run` returns the rows done, a multiple of `LANES`; the caller does the
/// rest. Used by [`lstmc_transpose`] and by [`super::Product::block_by_columns`], whose
/// column-major scratch it writes into `c` (there half the time of element by element
/// with AVX-512: 49 against 96 µs for W4's 64 × 2048; about the same with Zen 2's AVX2,
/// W4's forward 1.00 against it at one thread).
///
/// Its caller guarantees: `dst` holds `cols` rows of `rows` elements, `ds` apart, that
/// nothing else writes during the call; `LANES · ss` fits a gather's 32-bit offsets.
pub(super) struct Transpose<'a> {
    pub src: &'a [f32],
    pub ss: usize,
    pub dst: *mut f32,
    pub ds: usize,
    pub rows: usize,
    pub cols: usize,
}

impl VecKernel for Transpose<'_> {
    type Output = usize;
    #[inline(always)]
    unsafe fn run<S: Simd>(self, s: S) -> usize {
        let Transpose {
            src,
            ss,
            dst,
            ds,
            rows,
            cols,
        } = self;
        let bands = rows / S::LANES;
        for band in 0..bands {
            let r = band * S::LANES;
            for c in 0..cols {
                // SAFETY: lanes `r..r + LANES` of column `c` are elements of `src`
                // (`r + LANES <= rows`, `c < cols`, the slice holding the shape), and
                // `LANES · ss` fits the gather's offsets; `dst[c · ds + r..][..LANES]`
                // lies within row `c` of the transpose (the caller's).
                unsafe {
                    let v = s.gather(src.as_ptr().add(r * ss + c), ss);
                    s.store(dst.add(c * ds + r), v);
                }
            }
        }
        bands * S::LANES
    }
}

/// `dst = srcᵀ` by scalar tiles of [`TILE`] × [`TILE`] (see [`lstmc_transpose`]).
fn transpose_tiles(src: &[f32], ss: usize, dst: &mut [f32], ds: usize, rows: usize, cols: usize) {
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for r in r0..r1 {
                let from = &src[r * ss + c0..r * ss + c1];
                for (c, &v) in (c0..c1).zip(from) {
                    dst[c * ds + r] = v;
                }
            }
        }
    }
}

/// Side of [`transpose_tiles`]' tiles: 16 floats, a cache line.
const TILE: usize = 16;

#[cfg(test)]
mod tests {
    /// On every vector set and without: bands of vectors and tiles of every shape (whole,
    /// cut at the right, at the bottom, both, a single element, one row, one column),
    /// with rows wider than the matrices, against the definition; the padding of the
    /// transpose's rows stays as it was.
    #[test]
    fn transposes_of_every_shape_leave_the_padding() {
        let shapes = [
            (1, 1),
            (1, 40),
            (40, 1),
            (8, 8),
            (16, 16),
            (17, 33),
            (33, 17),
            (64, 256),
        ];
        let isas = super::Isa::available().into_iter().map(Some);
        for isa in isas.chain([None]) {
            for (rows, cols) in shapes {
                let (ss, ds) = (cols + 3, rows + 5);
                let src: Vec<f32> = (0..rows * ss).map(|i| i as f32).collect();
                let mut dst = vec![-1.0f32; cols * ds];
                super::transpose(isa, &src, ss, &mut dst, ds, rows, cols);
                for c in 0..cols {
                    for r in 0..ds {
                        let want = if r < rows { src[r * ss + c] } else { -1.0 };
                        let at = format!("{isa:?} {rows}×{cols}: ({c}, {r})");
                        assert_eq!(dst[c * ds + r], want, "{at}");
                    }
                }
            }
        }
    }
}
