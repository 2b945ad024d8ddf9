//! The few-row products and the tile transpose on every vector set this CPU has, against
//! scalar references: products in `f64` to 1e-5, transposes exactly; nothing written
//! outside the result (the rows' padding keeps a sentinel).

use super::simd::Isa;
use super::transpose::Transpose;
use super::{FewRows, FewRowsPart};

/// Deterministic values in `[-1, 1)`.
pub(super) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

const SENTINEL: f32 = -12345.0;

/// `code`'s product (see `lstmc_few_rows`) of `m` rows, `k` summed and `n` columns, with
/// rows 3 elements longer than their width, on `isa`; checked against `f64` sums.
fn check_product(isa: Isa, code: u64, m: usize, k: usize, n: usize) {
    // Operand shapes (rows × cols) of c, a, w for each code.
    let (a_shape, w_shape, c_shape) = match code {
        0 => ((m, k), (k, n), (m, n)),
        1 => ((m, k), (n, k), (m, n)),
        _ => ((m, k), (m, n), (k, n)),
    };
    let pad = 3;
    let a = values(a_shape.0 * (a_shape.1 + pad), 1 + code);
    let w = values(w_shape.0 * (w_shape.1 + pad), 2 + code);
    let (a_rs, w_rs, c_rs) = (a_shape.1 + pad, w_shape.1 + pad, c_shape.1 + pad);
    let mut c = vec![SENTINEL; c_shape.0 * c_rs];
    let part = FewRows {
        m,
        n,
        k,
        a: a.as_ptr(),
        a_rs,
        w: w.as_ptr(),
        w_rs,
        c: c.as_mut_ptr(),
        c_rs,
    };
    // SAFETY: `isa` is this CPU's, and the operands hold the shapes above.
    unsafe { isa.run(FewRowsPart { code, part }) };
    let at = |x: &[f32], rs: usize, r: usize, j: usize| f64::from(x[r * rs + j]);
    for r in 0..c_shape.0 {
        for j in 0..c_rs {
            let got = c[r * c_rs + j];
            if j >= c_shape.1 {
                assert_eq!(
                    got, SENTINEL,
                    "{isa:?} code {code} wrote padding ({r}, {j})"
                );
                continue;
            }
            let want: f64 = match code {
                0 => (0..k)
                    .map(|i| at(&a, a_rs, r, i) * at(&w, w_rs, i, j))
                    .sum(),
                1 => (0..k)
                    .map(|i| at(&a, a_rs, r, i) * at(&w, w_rs, j, i))
                    .sum(),
                _ => (0..m)
                    .map(|t| at(&a, a_rs, t, r) * at(&w, w_rs, t, j))
                    .sum(),
            };
            assert!(
                (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{isa:?} code {code} m {m} k {k} n {n}: ({r}, {j}) = {got}, want {want}"
            );
        }
    }
}

#[test]
fn few_row_products_match_f64_sums_on_every_vector_set() {
    let isas = Isa::available();
    for isa in isas {
        for code in [0, 1, 2] {
            for m in [1, 3, 4] {
                for k in [1, 7, 16, 33] {
                    for n in [1, 5, 8, 17, 130, 257] {
                        check_product(isa, code, m, k, n);
                    }
                }
            }
        }
    }
}

#[test]
fn tiles_transpose_whole_vectors_exactly_and_report_the_rest() {
    for isa in Isa::available() {
        for (m, n) in [(1, 8), (5, 37), (16, 64), (3, 7)] {
            let s = values(m * n, 9);
            // `c` is a 2-row-longer block whose rows are 5 elements longer than `n`;
            // the tiles go to rows `1..1 + m`, columns `2..2 + n`.
            let c_rs = n + 5;
            let mut c = vec![SENTINEL; (m + 2) * c_rs];
            // `s` is column-major: `n` rows of `m`, whose transpose is the block.
            let tiles = Transpose {
                src: &s,
                ss: m,
                dst: c[c_rs + 2..].as_mut_ptr(),
                ds: c_rs,
                rows: n,
                cols: m,
            };
            // SAFETY: `isa` is this CPU's; `c` holds the block.
            let done = unsafe { isa.run(tiles) };
            let lanes = if isa == Isa::Avx512 { 16 } else { 8 };
            assert_eq!(done, n / lanes * lanes, "{isa:?} {m}×{n}");
            for r in 0..m + 2 {
                for j in 0..c_rs {
                    let inside = (1..1 + m).contains(&r) && (2..2 + done).contains(&j);
                    let want = if inside {
                        s[(j - 2) * m + (r - 1)]
                    } else {
                        SENTINEL
                    };
                    assert_eq!(c[r * c_rs + j], want, "{isa:?} {m}×{n} at ({r}, {j})");
                }
            }
        }
    }
}
