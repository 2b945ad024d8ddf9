//! Products against a packed weight (`Op::Pack`, `Op::MatMulPacked`, `passes::pack`):
//! a recurrent step's `h · U` with `U` packed once before the loop into panels of
//! [`PANEL`] columns, each panel's rows contiguous.
//!
//! The kernel holds a block of 4 rows × 24 columns of `c` in 12 AVX2 registers and, per
//! element of the inner dimension, loads one panel row (3 vectors) and broadcasts the 4
//! elements of `a`: 12 FMAs against 7 loads, so it is bound by the two FMA pipes. Its
//! loop is written in assembly: with intrinsics LLVM kept one accumulator on the stack
//! (16 registers, all live) and ran at half the speed. Every row of `c` is the same
//! sum in the same order whatever the rows around it, the blocks or the threads.
//!
//! On Zen 2 (2026-12-05, `lstmc bench --profile`, one thread), against the `gemm` crate
//! as lstmc called it before: W3's step product (32×256 · 256×1024) 200 → 169 µs, 84 →
//! 99 GFLOP/s; W4's (64×512 · 512×2048, read transposed before) 1.44 → 1.35 ms; W4's
//! input projection (6400×512 · 512×2048) 159 → 147 ms. Packing each panel on the fly
//! instead of once before the loop ran 20–25% slower in a standalone test.

use super::pool::{self, Handoff};
use super::split_part;
use crate::ir::PANEL;

/// Whether this CPU runs the packed kernel (AVX2 and FMA): where it does not, code
/// generation turns the pass off (`Tuning::packed_weights`) and [`lstmc_gemm_packed`]'s
/// portable loop is only a fallback.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether packing is the default here: the kernel runs, and the CPU lacks AVX-512F,
/// where the `gemm` crate's 512-bit kernels were measured (and this 256-bit kernel not).
pub fn preferred() -> bool {
    available() && super::simd::Isa::detect() != Some(super::simd::Isa::Avx512)
}

/// `dst = pack(b)` for `b` of `k × n`, element `(i, j)` at `b[i · b_rs + j · b_cs]`
/// (`b_cs = 1` for a weight, `b_rs = 1` for the transpose of one): panel `p` holds
/// columns `p · PANEL ..` as `k` rows of `PANEL`, zeros past column `n`.
///
/// A whole row of a panel that already holds its bits is not written again (for a
/// weight as it is stored; the transposed packing, which only training steps use, whose
/// weights change at every step, writes every row): the arena keeps the packed weight
/// from one call to the next unless later values took its slot, and an inference's
/// weights do not change between calls, so its packing then only reads. That matters
/// most at two threads, where both cores read every panel of
/// a step's product (its rows are split): each line that the next call's packing wrote
/// was first taken back from the other core. With `threads > 1` the panels are split
/// between the calling thread and the [`pool`]'s workers too. W3's recurrent kernel
/// (1 MB, `lstmc bench --profile`, Zen 2, 2026-12-05) took 240–256 µs to pack at two
/// threads and 156–173 µs at one; now 53–61 µs and 70–104 µs. (Bits, not values, are
/// compared, so that -0 and NaN are copied as they are.)
pub(super) extern "C" fn lstmc_pack(
    b: *const f32,
    b_rs: u64,
    b_cs: u64,
    k: u64,
    n: u64,
    dst: *mut f32,
    threads: u64,
) {
    let (b_rs, b_cs, k, n) = (b_rs as usize, b_cs as usize, k as usize, n as usize);
    let panels = n.div_ceil(PANEL);
    let threads = if k * n >= SPLIT_MIN {
        threads as usize
    } else {
        1
    };
    let parts = pool::parts(threads).min(panels).max(1);
    let (b, dst) = (b as usize, dst as usize);
    pool::run(parts, Handoff::Always, &|part| {
        let mine = split_part(panels, parts, 1, part);
        // SAFETY: generated code passes `b`'s planned `k × n` elements with their strides
        // and a `dst` of `panels · k · PANEL` elements (`Op::Pack`'s result), both
        // bounds-checked; each part writes its own panels.
        let out = unsafe {
            std::slice::from_raw_parts_mut(
                (dst as *mut f32).add(mine.start * k * PANEL),
                mine.len() * k * PANEL,
            )
        };
        pack_panels(b as *const f32, b_rs, b_cs, k, n, mine.start, out);
    });
}

/// Whether `row` holds `src`'s bits (a branch-free sum of differences, which vectorizes).
fn same_bits(row: &[f32], src: &[f32; PANEL]) -> bool {
    row.iter()
        .zip(src)
        .fold(0, |acc, (a, b)| acc | (a.to_bits() ^ b.to_bits()))
        == 0
}

/// Weights of at least this many elements are packed on all threads ([`lstmc_pack`]):
/// W3's input kernel (64 × 1024) took 46–48 µs to pack on one core at two threads,
/// 15 µs at one.
const SPLIT_MIN: usize = 1 << 15;

/// Panels `first ..` of [`lstmc_pack`] into `dst` (whole panels).
fn pack_panels(
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    k: usize,
    n: usize,
    first: usize,
    dst: &mut [f32],
) {
    // A few rows of `b` (or of its transpose) at a time into every panel, so that the
    // lines read stay in L1 from one panel to the next, and whole panel rows copied as
    // fixed-size arrays (moves, not `memcpy` calls). In a standalone loop over W3's
    // recurrent kernel, with and without other data passing through the caches between
    // packings: 36–45 µs; panel by panel (a pass down `b` for every panel) 45–58 µs; by
    // 32 or 128 rows at a time, 42–64 µs.
    const ROWS: usize = 8;
    for start in (0..k).step_by(ROWS) {
        let rows = start..(start + ROWS).min(k);
        for (p, panel) in (first..).zip(dst.chunks_exact_mut(k * PANEL)) {
            let cols = (n - p * PANEL).min(PANEL);
            let out = &mut panel[rows.start * PANEL..rows.end * PANEL];
            if b_cs == 1 {
                for (i, row) in rows.clone().zip(out.chunks_exact_mut(PANEL)) {
                    // SAFETY: row `i`, columns `p · PANEL .. + cols` of `b` (the caller's).
                    let src =
                        unsafe { std::slice::from_raw_parts(b.add(i * b_rs + p * PANEL), cols) };
                    match <&[f32; PANEL]>::try_from(src) {
                        // Rows already packed are left alone (see `lstmc_pack`).
                        Ok(whole) if same_bits(row, whole) => {}
                        Ok(whole) => row.copy_from_slice(whole),
                        Err(_) => {
                            row[..cols].copy_from_slice(src);
                            row[cols..].fill(0.0);
                        }
                    }
                }
            } else {
                out.fill(0.0);
                for j in 0..cols {
                    for (i, row) in rows.clone().zip(out.chunks_exact_mut(PANEL)) {
                        // SAFETY: element `i` of column `p · PANEL + j` of `b` (its
                        // elements `b_rs` apart; the caller's).
                        row[j] = unsafe { *b.add((p * PANEL + j) * b_cs + i * b_rs) };
                    }
                }
            }
        }
    }
}

/// `c = a · w` for `a` of `m × k` (rows `a_rs` apart), `w` of `k × n` packed in `p`
/// ([`lstmc_pack`]), `c` of `m × n` (rows `c_rs` apart). With `threads > 1`, the rows
/// (by fours, where each part gets 8 or more) or else the panels are split between the
/// calling thread and the [`pool`]'s workers.
#[allow(clippy::too_many_arguments)]
pub(super) extern "C" fn lstmc_gemm_packed(
    m: u64,
    n: u64,
    k: u64,
    a: *const f32,
    a_rs: u64,
    p: *const f32,
    c: *mut f32,
    c_rs: u64,
    threads: u64,
) {
    let product = Packed {
        n: n as usize,
        k: k as usize,
        a,
        a_rs: a_rs as usize,
        p,
        c,
        c_rs: c_rs as usize,
    };
    let (m, panels) = (m as usize, product.n.div_ceil(PANEL));
    let parts = pool::parts(threads as usize);
    if parts == 1 {
        product.block(0..m, 0..panels);
    } else if m >= 8 * parts {
        pool::run(parts, Handoff::Always, &|i| {
            product.block(split_part(m, parts, 4, i), 0..panels)
        });
    } else {
        pool::run(parts, Handoff::Always, &|i| {
            product.block(0..m, split_part(panels, parts, 1, i))
        });
    }
}

/// The operands of one packed product (see [`lstmc_gemm_packed`]).
struct Packed {
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: usize,
    p: *const f32,
    c: *mut f32,
    c_rs: usize,
}

// SAFETY: the parts of a split product write disjoint blocks of `c` and only read `a`, `p`.
unsafe impl Sync for Packed {}

/// Bytes of `a`'s rows that one pass over the panels reads: they stay in the L2 cache
/// (a quarter of Zen 2's 512 KB, the smallest L2 measured; 256 KB ran W4 no faster)
/// while each panel, in L1, meets them.
const ROWS_BYTES: usize = 128 << 10;

impl Packed {
    /// `c[rows, panels' columns] = a[rows, :] · w[:, panels' columns]` on this thread,
    /// by chunks of rows that fit [`ROWS_BYTES`].
    fn block(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        let chunk = (ROWS_BYTES / (4 * self.k.max(1)) / 4 * 4).max(4);
        // Pairs of panels where the rows span several chunks (see `chunk`).
        let group = if rows.len() > chunk { 2 } else { 1 };
        let mut first = rows.start;
        while first < rows.end {
            let end = (first + chunk).min(rows.end);
            self.chunk(first..end, panels.clone(), group);
            first = end;
        }
    }

    /// [`Packed::block`] for one chunk of rows, by groups of 1 or 2 panels: each block
    /// of rows gets every panel of a group in turn. By pairs, a block writes 48 columns
    /// of `c` (whole cache lines) at once, not a line's two parts a pass over the chunk
    /// apart, which pays where `c` is too large to stay in the cache between them: W4's
    /// input projection (6400 rows) 146–149 → 141 ms (`lstmc bench --profile`). Where
    /// one chunk holds all the rows (a step's product), a panel stays in L1 for all of
    /// them instead, and pairs, which do not fit there, ran W3's and W5's steps 1–4%
    /// slower (Zen 2, 2026-12-05).
    fn chunk(&self, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>, group: usize) {
        #[cfg(target_arch = "x86_64")]
        let avx2 = available();
        let mut first = panels.start;
        while first < panels.end {
            let pair = first..(first + group).min(panels.end);
            // SAFETY: generated code passes a bounds-checked plan's operands: `a`'s rows,
            // the packed panels of `p` (`k · PANEL` elements each) and `c`'s block.
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                unsafe { self.panels_avx2(rows.clone(), pair.clone()) };
                first = pair.end;
                continue;
            }
            for panel in pair.clone() {
                // SAFETY: as above.
                unsafe { self.panel_portable(rows.clone(), panel) };
            }
            first = pair.end;
        }
    }

    /// Panel `panel` of `p`, and its first column in `c`, and its width.
    fn panel(&self, panel: usize) -> (*const f32, *mut f32, usize) {
        // Addresses inside the operands for the panels of this product (`wrapping_add`
        // keeps this safe; the callers dereference them).
        let p = self.p.wrapping_add(panel * self.k * PANEL);
        let c = self.c.wrapping_add(panel * PANEL);
        (p, c, (self.n - panel * PANEL).min(PANEL))
    }

    /// The columns of panels `pair` (one or two) of `c[rows]`, 4 rows at a time (every
    /// panel for each 4), then the 1 to 3 rows left.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `pair` are panels of this product and `rows` its rows.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn panels_avx2(&self, rows: std::ops::Range<usize>, pair: std::ops::Range<usize>) {
        use x86::*;
        let mut r = rows.start;
        // SAFETY: the caller's; each call reads rows `r ..` of `a` inside `rows` and one
        // panel of `p`, and writes those rows of the panel's columns of `c`.
        unsafe {
            while r + 4 <= rows.end {
                for panel in pair.clone() {
                    let (p, c, cols) = self.panel(panel);
                    let acc = four_rows(self.k, self.a.add(r * self.a_rs), self.a_rs, p);
                    for (i, acc) in acc.iter().enumerate() {
                        store(acc, c.add((r + i) * self.c_rs), cols);
                    }
                }
                r += 4;
            }
            for r in r..rows.end {
                for panel in pair.clone() {
                    let (p, c, cols) = self.panel(panel);
                    let acc = one_row(self.k, self.a.add(r * self.a_rs), p);
                    store(&acc, c.add(r * self.c_rs), cols);
                }
            }
        }
    }

    /// As [`Packed::panels_avx2`], for one panel, element by element, summing in the
    /// same order.
    ///
    /// # Safety
    /// `panel` is a panel of this product and `rows` its rows.
    unsafe fn panel_portable(&self, rows: std::ops::Range<usize>, panel: usize) {
        let (p, c, cols) = self.panel(panel);
        for r in rows {
            for j in 0..cols {
                let mut s = 0.0f32;
                for i in 0..self.k {
                    // SAFETY: the caller's: element `i` of row `r` of `a`, row `i` of the panel.
                    s = unsafe {
                        (*self.a.add(r * self.a_rs + i)).mul_add(*p.add(i * PANEL + j), s)
                    };
                }
                // SAFETY: the caller's: element `j` of row `r` of `c`'s block.
                unsafe { *c.add(r * self.c_rs + j) = s };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::PANEL;
    use std::arch::x86_64::*;

    /// A row's 24 columns of `c`.
    pub(super) type Row = [__m256; 3];

    /// Rows `a[0..4]` (rows `a_rs` apart) times the panel `p` of `k` rows.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a` holds 4 rows of `k`, `p` `k · PANEL` elements.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn four_rows(
        k: usize,
        a: *const f32,
        a_rs: usize,
        p: *const f32,
    ) -> [Row; 4] {
        let mut c = [_mm256_setzero_ps(); 12];
        // SAFETY: reads `a[r · a_rs + i]` for `r < 4`, `i < k`, and `p[i · 24 .. + 24]`,
        // within the caller's operands; writes only registers.
        unsafe {
            std::arch::asm!(
                "vxorps ymm0, ymm0, ymm0",
                "vxorps ymm1, ymm1, ymm1",
                "vxorps ymm2, ymm2, ymm2",
                "vxorps ymm3, ymm3, ymm3",
                "vxorps ymm4, ymm4, ymm4",
                "vxorps ymm5, ymm5, ymm5",
                "vxorps ymm6, ymm6, ymm6",
                "vxorps ymm7, ymm7, ymm7",
                "vxorps ymm8, ymm8, ymm8",
                "vxorps ymm9, ymm9, ymm9",
                "vxorps ymm10, ymm10, ymm10",
                "vxorps ymm11, ymm11, ymm11",
                "test {k}, {k}",
                "jz 3f",
                "2:",
                "vmovups ymm12, [{p}]",
                "vmovups ymm13, [{p} + 32]",
                "vmovups ymm14, [{p} + 64]",
                "vbroadcastss ymm15, [{a}]",
                "vfmadd231ps ymm0, ymm15, ymm12",
                "vfmadd231ps ymm1, ymm15, ymm13",
                "vfmadd231ps ymm2, ymm15, ymm14",
                "vbroadcastss ymm15, [{a} + {l}]",
                "vfmadd231ps ymm3, ymm15, ymm12",
                "vfmadd231ps ymm4, ymm15, ymm13",
                "vfmadd231ps ymm5, ymm15, ymm14",
                "vbroadcastss ymm15, [{a} + {l} * 2]",
                "vfmadd231ps ymm6, ymm15, ymm12",
                "vfmadd231ps ymm7, ymm15, ymm13",
                "vfmadd231ps ymm8, ymm15, ymm14",
                "vbroadcastss ymm15, [{a3}]",
                "vfmadd231ps ymm9, ymm15, ymm12",
                "vfmadd231ps ymm10, ymm15, ymm13",
                "vfmadd231ps ymm11, ymm15, ymm14",
                "add {a}, 4",
                "add {a3}, 4",
                "add {p}, 96",
                "dec {k}",
                "jnz 2b",
                "3:",
                k = inout(reg) k => _,
                a = inout(reg) a => _,
                a3 = inout(reg) a.add(3 * a_rs) => _,
                l = in(reg) a_rs * 4,
                p = inout(reg) p => _,
                out("ymm0") c[0], out("ymm1") c[1], out("ymm2") c[2],
                out("ymm3") c[3], out("ymm4") c[4], out("ymm5") c[5],
                out("ymm6") c[6], out("ymm7") c[7], out("ymm8") c[8],
                out("ymm9") c[9], out("ymm10") c[10], out("ymm11") c[11],
                out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                options(nostack, readonly),
            );
        }
        [
            [c[0], c[1], c[2]],
            [c[3], c[4], c[5]],
            [c[6], c[7], c[8]],
            [c[9], c[10], c[11]],
        ]
    }

    /// Row `a` (`k` elements) times the panel `p`, in the order of [`four_rows`].
    ///
    /// # Safety
    /// As [`four_rows`], for one row.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn one_row(k: usize, a: *const f32, p: *const f32) -> Row {
        let mut acc = [_mm256_setzero_ps(); 3];
        for i in 0..k {
            // SAFETY: element `i` of the row, row `i` of the panel.
            unsafe {
                let x = _mm256_broadcast_ss(&*a.add(i));
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(p.add(i * PANEL + 8 * v)), *acc);
                }
            }
        }
        acc
    }

    /// Stores the first `cols` columns of `row` at `c`: whole vectors, then a masked
    /// store of the last part. (Through a row on the stack and a copy of `cols` elements,
    /// the compiler merged the two cases into one call of `memcpy` per row of every
    /// block: W3's forward ran 3–5% faster without it.)
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `c` holds `cols <= 24` elements.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn store(row: &Row, c: *mut f32, cols: usize) {
        // SAFETY: the caller's; each store writes lanes below `cols` only.
        unsafe {
            for (v, x) in row.iter().enumerate() {
                let left = cols.saturating_sub(8 * v);
                if left >= 8 {
                    _mm256_storeu_ps(c.add(8 * v), *x);
                } else if left > 0 {
                    _mm256_maskstore_ps(c.add(8 * v), mask(left), *x);
                }
            }
        }
    }

    /// A mask of the first `n < 8` lanes.
    #[target_feature(enable = "avx2,fma")]
    fn mask(n: usize) -> __m256i {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes)
    }
}

/// Products against packed weights (stored as they are and transposed), on 1 and 2
/// threads, against `f64` sums (to 1e-6 of the terms' magnitudes) and, bit for bit, against the portable loop; nothing
/// written outside the result (the rows' padding keeps a sentinel).
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::kernel_tests::values;
    use super::*;

    const SENTINEL: f32 = -12345.0;

    /// `c = a · b` of `m × k` and `k × n`, with `b` stored transposed when `transposed`,
    /// and rows 3 elements longer than their width.
    fn check(m: usize, k: usize, n: usize, transposed: bool, threads: u64) {
        let pad = 3;
        let (a_rs, c_rs) = (k + pad, n + pad);
        let a = values(m * a_rs, 1);
        // `b`'s element (i, j) at `i · rs + j · cs`.
        let (b, rs, cs) = match transposed {
            false => (values(k * (n + pad), 2), n + pad, 1),
            true => (values(n * (k + pad), 2), 1, k + pad),
        };
        let panels = n.div_ceil(PANEL);
        let mut p = vec![SENTINEL; panels * k * PANEL];
        lstmc_pack(
            b.as_ptr(),
            rs as u64,
            cs as u64,
            k as u64,
            n as u64,
            p.as_mut_ptr(),
            threads,
        );
        let mut c = vec![SENTINEL; m * c_rs];
        let (ap, pp, cp) = (a.as_ptr(), p.as_ptr(), c.as_mut_ptr());
        lstmc_gemm_packed(
            m as u64,
            n as u64,
            k as u64,
            ap,
            a_rs as u64,
            pp,
            cp,
            c_rs as u64,
            threads,
        );
        let mut portable = vec![SENTINEL; m * c_rs];
        let product = Packed {
            n,
            k,
            a: ap,
            a_rs,
            p: pp,
            c: portable.as_mut_ptr(),
            c_rs,
        };
        for panel in 0..panels {
            // SAFETY: the operands hold the shapes above; `panel` is one of `p`'s.
            unsafe { product.panel_portable(0..m, panel) };
        }
        let case = format!("{m}×{k}·{k}×{n} transposed {transposed} threads {threads}");
        for r in 0..m {
            for j in 0..c_rs {
                let got = c[r * c_rs + j];
                if j >= n {
                    assert_eq!(got, SENTINEL, "{case}: wrote padding ({r}, {j})");
                    continue;
                }
                let terms =
                    (0..k).map(|i| f64::from(a[r * a_rs + i]) * f64::from(b[i * rs + j * cs]));
                let want: f64 = terms.clone().sum();
                // f32 rounding grows with the terms' magnitude, not the sum's.
                let scale: f64 = terms.map(f64::abs).sum();
                let err = (f64::from(got) - want).abs();
                assert!(
                    err <= 1e-6 * (1.0 + scale),
                    "{case} ({r}, {j}): {got} vs {want}"
                );
                assert_eq!(
                    got.to_bits(),
                    portable[r * c_rs + j].to_bits(),
                    "{case} ({r}, {j}): kernel and portable loop differ"
                );
            }
        }
    }

    #[test]
    fn packed_products_match_f64_sums_and_the_portable_loop() {
        let _pool = super::pool::exclusive();
        for m in [1, 3, 4, 5, 8, 13, 17] {
            for k in [1, 2, 7, 33] {
                for n in [1, 5, 23, 24, 25, 49, 72] {
                    for transposed in [false, true] {
                        check(m, k, n, transposed, 1);
                    }
                }
            }
        }
        // Split by rows (16 and more) and by panels.
        for (m, n) in [(16, 50), (21, 97), (5, 97), (9, 24)] {
            for transposed in [false, true] {
                check(m, 40, n, transposed, 2);
            }
        }
    }

    /// Packing into a buffer that holds an earlier packing (as the arena's slot does from
    /// one call to the next) gives the packed layout, computed here element by element:
    /// the rows whose bits changed are written again, including a zero's sign and a
    /// NaN's payload.
    #[test]
    fn packing_again_writes_exactly_what_changed() {
        let _pool = super::pool::exclusive();
        let pack = |b: &[f32], k: usize, n: usize, dst: &mut [f32], threads: u64| {
            lstmc_pack(
                b.as_ptr(),
                n as u64,
                1,
                k as u64,
                n as u64,
                dst.as_mut_ptr(),
                threads,
            )
        };
        let layout = |b: &[f32], k: usize, n: usize| -> Vec<u32> {
            let mut out = Vec::new();
            for p in 0..n.div_ceil(PANEL) {
                for i in 0..k {
                    for j in p * PANEL..(p + 1) * PANEL {
                        out.push(if j < n { b[i * n + j].to_bits() } else { 0 });
                    }
                }
            }
            out
        };
        // Small (one part) and large enough to split between two threads.
        for (k, n, threads) in [(40usize, 50usize, 1), (256, 200, 2)] {
            let mut b = values(k * n, 3);
            b[5] = 0.0;
            let mut kept = vec![SENTINEL; n.div_ceil(PANEL) * k * PANEL];
            pack(&b, k, n, &mut kept, threads);
            let changes: [(usize, f32); 4] = [
                (5, -0.0),
                (k * n / 2, 1.5),
                (k * n - 1, f32::from_bits(0x7fc0_0001)),
                (n + 3, f32::from_bits(0x7fc0_0002)),
            ];
            for (i, v) in changes {
                b[i] = v;
                pack(&b, k, n, &mut kept, threads);
                let bits: Vec<u32> = kept.iter().map(|x| x.to_bits()).collect();
                assert!(bits == layout(&b, k, n), "{k}×{n}: element {i} set to {v}");
            }
        }
    }

    #[test]
    fn rows_past_a_chunk_are_multiplied_too() {
        let _pool = super::pool::exclusive();
        // k = 8192: chunks of 4 rows ([`ROWS_BYTES`]), so panels go by pairs: 7 rows in
        // two chunks, 2 panels; 9 rows in three, 3 panels (a pair and one).
        check(7, 8192, 30, false, 1);
        for threads in [1, 2] {
            check(9, 8192, 50, true, threads);
        }
    }
}
