//! Optimizer updates in place on 512-bit host code (`lstmc_update`): Adam's and
//! RMSprop's rules 16 lanes at a time, with the same operations in the same order as the
//! generated 128-bit updates, and a few-row weight gradient computed as they go.

use super::{lanes, split_rows, Handoff};

/// An optimizer's update of `rows × cols` parameters in place (rows `*s` elements
/// apart), 16 lanes at a time: the same operations in the same order as the generated
/// 128-bit code, so the same bits (square roots and divisions bound these loops).
/// Emitted only when [`super::wide_updates`] holds. `code` 0 is Adam, with
/// `k = [1 - β1, 1 - β2, ε, _]` and slots `m`, `v`; 1 is RMSprop, with
/// `k = [ρ, 1 - ρ, ε, momentum]` and slots velocity, momentum. `rate` is the step's
/// learning rate (Adam's bias-corrected).
///
/// With `t == 0` the gradient is stored at `g` (rows `gs` apart). Otherwise it is
/// `aᵀ · d`, with `a = g` of `t × rows` (rows `gs` apart) and `d` of `t × cols`, few rows
/// `t`, computed 16 lanes at a time as the update needs it, the way [`super::lstmc_few_rows`]
/// computes it (so the same bits), instead of stored whole: the tutorial's recurrent
/// kernel, its two slots and its gradient (256 KB each) overflow this core's 1 MB L2;
/// without the gradient, they fit. With `threads > 1`, [`super::split_rows`] splits the rows.
#[allow(clippy::too_many_arguments)]
pub(super) extern "C" fn lstmc_update(
    code: u64,
    w: *mut f32,
    ws: u64,
    g: *const f32,
    gs: u64,
    d: *const f32,
    d_rs: u64,
    t: u64,
    s1: *mut f32,
    s1s: u64,
    s2: *mut f32,
    s2s: u64,
    rows: u64,
    cols: u64,
    threads: u64,
    rate: f32,
    k0: f32,
    k1: f32,
    k2: f32,
    k3: f32,
) {
    let (t, cols) = (t as usize, cols as usize);
    let (ws, gs, s1s, s2s) = (ws as usize, gs as usize, s1s as usize, s2s as usize);
    // SAFETY: called by generated code with pointers and sizes from a bounds-checked plan:
    // `d` has `t` rows of `cols` (none when the gradient is stored).
    let d_row = |i: usize| unsafe { std::slice::from_raw_parts(d.add(i * d_rs as usize), cols) };
    // Few rows (at most `Tuning::few_rows_max`, 4 by default) without an allocation: the
    // tutorial's step makes five of these calls.
    let mut few: [&[f32]; 4] = [&[]; 4];
    let many: Vec<&[f32]>;
    let d_rows: &[&[f32]] = if t <= few.len() {
        for (i, row) in few.iter_mut().enumerate().take(t) {
            *row = d_row(i);
        }
        &few[..t]
    } else {
        many = (0..t).map(d_row).collect();
        &many
    };
    let (w, g, s1, s2) = (w as usize, g as usize, s1 as usize, s2 as usize);
    split_rows(rows as usize, threads, Handoff::WhenNear, &|_, rows| {
        let (w, g, s1, s2) = (
            w as *mut f32,
            g as *const f32,
            s1 as *mut f32,
            s2 as *mut f32,
        );
        let update = |w: &mut [f32], grad: Grad, s1: &mut [f32], s2: &mut [f32]| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: generated code calls the updates only when the CPU has AVX-512F.
            unsafe {
                if code == 0 {
                    grad.update(Adam {
                        w,
                        m: s1,
                        v: s2,
                        k: [rate, k0, k1, k2],
                    })
                } else {
                    grad.update(Rmsprop {
                        w,
                        v: s1,
                        m: s2,
                        k: [rate, k0, k1, k2, k3],
                    })
                }
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (code, w, grad, s1, s2);
        };
        let (mut few, mut many) = ([0.0f32; 4], Vec::new());
        let xs: &mut [f32] = if t <= few.len() {
            &mut few[..t]
        } else {
            many.resize(t, 0.0);
            &mut many
        };
        if (1..16).contains(&cols) && ws == cols && s1s == cols && s2s == cols {
            // Rows narrower than a vector (a Dense kernel of 12 columns) waste lanes and
            // pay a call and a square root's latency per row: a chunk of contiguous rows
            // is updated as one row instead, its gradient gathered first (the same bits:
            // the lanes of an outer product are summed the same way either way).
            let chunk = (NARROW_CHUNK / cols).max(1);
            let mut flat = vec![0.0f32; chunk.min(rows.len()) * cols];
            for first in rows.clone().step_by(chunk) {
                let n = chunk.min(rows.end - first);
                if cfg!(target_arch = "x86_64") && (1..=4).contains(&t) {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above (AVX-512F); `g` is `a`, of `t` rows with the
                    // columns `first..first + n`, and each of `d_rows` has `cols < 16`.
                    unsafe {
                        outer_rows_avx512(&mut flat[..n * cols], g, gs, first, d_rows)
                    };
                } else {
                    for i in 0..n {
                        // SAFETY: row `first + i` of the gradient (see `row_grad`).
                        let grad = unsafe { row_grad(g, gs, cols, first + i, xs, d_rows) };
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: as above (AVX-512F).
                        unsafe {
                            grad.store_avx512(&mut flat[i * cols..(i + 1) * cols])
                        };
                        #[cfg(not(target_arch = "x86_64"))]
                        let _ = grad;
                    }
                }
                // SAFETY: rows `first..first + n` of the weight and its slots are
                // contiguous (`*s == cols`), and this part's alone.
                let (w, s1, s2) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(w.add(first * cols), n * cols),
                        std::slice::from_raw_parts_mut(s1.add(first * cols), n * cols),
                        std::slice::from_raw_parts_mut(s2.add(first * cols), n * cols),
                    )
                };
                update(w, Grad::Row(&flat[..n * cols]), s1, s2);
            }
            return;
        }
        for r in rows {
            // SAFETY: as above; the weight, its slots and the gradient are distinct slots,
            // and row `r` is this part's alone.
            let (w, s1, s2) = unsafe {
                (
                    std::slice::from_raw_parts_mut(w.add(r * ws), cols),
                    std::slice::from_raw_parts_mut(s1.add(r * s1s), cols),
                    std::slice::from_raw_parts_mut(s2.add(r * s2s), cols),
                )
            };
            // SAFETY: row `r` of the gradient (see `row_grad`).
            update(w, unsafe { row_grad(g, gs, cols, r, xs, d_rows) }, s1, s2);
        }
    });
}

/// Row `r` of an update's gradient ([`lstmc_update`]): stored at `g` (rows `gs` apart)
/// when `xs` is empty, else `Σ_i a[i, r] · d_rows[i]` with `a = g` (rows `gs` apart),
/// whose column `r` this reads into `xs`.
///
/// # Safety
/// `g` must point to a stored gradient with a row `r` of `cols` elements, or to `a` with
/// `xs.len()` rows and a column `r`.
unsafe fn row_grad<'a>(
    g: *const f32,
    gs: usize,
    cols: usize,
    r: usize,
    xs: &'a mut [f32],
    d_rows: &'a [&'a [f32]],
) -> Grad<'a> {
    if xs.is_empty() {
        // SAFETY: the caller's.
        return Grad::Row(unsafe { std::slice::from_raw_parts(g.add(r * gs), cols) });
    }
    for (i, x) in xs.iter_mut().enumerate() {
        // SAFETY: the caller's: `a[i, r]`.
        *x = unsafe { *g.add(i * gs + r) };
    }
    Grad::Outer { xs, rows: d_rows }
}

/// Rows `first..first + n` of the gradient `aᵀ · d` of rows narrower than a vector, one
/// after another into `flat` (`n × cols`, `cols = flat.len() / n < 16`): each row one
/// masked vector, `Σ_t a[t, r] · d[t]` summed as [`Grad::Outer`] sums it (so the same
/// bits), with the `d` rows in registers. Row by row through [`row_grad`], a call and a
/// dispatch per row of 12 took the tutorial's Dense kernel update 0.8 of its 1.3 µs.
///
/// # Safety
/// The CPU has AVX-512F; `a` has `d.len() <= 4` rows (`a_rs` apart) with the columns
/// `first..first + n`; each row of `d` has `cols` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn outer_rows_avx512(
    flat: &mut [f32],
    a: *const f32,
    a_rs: usize,
    first: usize,
    d: &[&[f32]],
) {
    use std::arch::x86_64::*;
    let Some(cols) = d.first().map(|r| r.len()) else {
        return;
    };
    let mask = lanes(0, cols);
    let mut dv = [_mm512_setzero_ps(); 4];
    for (v, row) in dv.iter_mut().zip(d) {
        // SAFETY: `cols` elements, under the mask.
        *v = unsafe { _mm512_maskz_loadu_ps(mask, row.as_ptr()) };
    }
    for (i, out) in flat.chunks_exact_mut(cols).enumerate() {
        let mut acc = _mm512_setzero_ps();
        for (t, v) in dv.iter().enumerate().take(d.len()) {
            // SAFETY: `a[t, first + i]`, the caller's.
            let x = unsafe { *a.add(t * a_rs + first + i) };
            acc = _mm512_fmadd_ps(_mm512_set1_ps(x), *v, acc);
        }
        // SAFETY: `cols` elements of `out`, under the mask.
        unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr(), mask, acc) };
    }
}

/// Elements of narrow rows that [`lstmc_update`] updates as one row.
const NARROW_CHUNK: usize = 1024;

/// Where an update row's gradient comes from, 16 lanes at a time.
enum Grad<'a> {
    /// A stored row.
    Row(&'a [f32]),
    /// `Σ_t xs[t] · rows[t]`: a row of `aᵀ · d`, summed in order of `t` from zero with one
    /// fused multiply-add per term (as [`super::FewRows::transposed_times_avx512`] does).
    Outer {
        xs: &'a [f32],
        rows: &'a [&'a [f32]],
    },
}

#[cfg(target_arch = "x86_64")]
impl Grad<'_> {
    /// The whole row into `out` (as long as the row).
    #[target_feature(enable = "avx512f")]
    unsafe fn store_avx512(&self, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = out.len();
        for i in (0..n).step_by(16) {
            let mask = lanes(i, n);
            // SAFETY: the mask stops at `n`, the length of `out` and of the gradient's rows.
            unsafe {
                let v = self.at(i, mask);
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, v);
            }
        }
    }

    /// Runs `row` with this gradient as a source of lanes specialized for its kind: a
    /// stored row, or an outer product of one to four terms with their broadcasts and
    /// row addresses held in registers (the tutorial's recurrent kernel: four). In
    /// place of a loop over a slice of terms per 16 lanes, that made W2's Adam update
    /// 15% faster. The sums are the same, so the bits are too.
    #[target_feature(enable = "avx512f")]
    unsafe fn update(&self, row: impl RowUpdate) {
        // SAFETY (of each call): the caller's (rows as long as the update's).
        unsafe {
            match *self {
                Grad::Row(g) => row.run(&Stored(g)),
                Grad::Outer { xs, rows } => match xs.len() {
                    1 => row.run(&Terms::<1>::new(xs, rows)),
                    2 => row.run(&Terms::<2>::new(xs, rows)),
                    3 => row.run(&Terms::<3>::new(xs, rows)),
                    4 => row.run(&Terms::<4>::new(xs, rows)),
                    _ => row.run(self),
                },
            }
        }
    }
}

/// A gradient row, 16 lanes at a time.
#[cfg(target_arch = "x86_64")]
trait Lanes {
    /// Lanes `i..i + 16` under `mask`, which stops within the row.
    ///
    /// # Safety
    /// The CPU has AVX-512F, and the masked lanes lie within the row.
    unsafe fn at(&self, i: usize, mask: u16) -> std::arch::x86_64::__m512;
}

#[cfg(target_arch = "x86_64")]
impl Lanes for Grad<'_> {
    #[inline]
    unsafe fn at(&self, i: usize, mask: u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's mask keeps lanes within the rows (all of the update's width).
        unsafe {
            match self {
                Grad::Row(g) => Stored(g).at(i, mask),
                Grad::Outer { xs, rows } => {
                    let mut acc = _mm512_setzero_ps();
                    for (x, row) in xs.iter().zip(rows.iter()) {
                        let dv = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i));
                        acc = _mm512_fmadd_ps(_mm512_set1_ps(*x), dv, acc);
                    }
                    acc
                }
            }
        }
    }
}

/// A stored gradient row.
#[cfg(target_arch = "x86_64")]
struct Stored<'a>(&'a [f32]);

#[cfg(target_arch = "x86_64")]
impl Lanes for Stored<'_> {
    #[inline]
    unsafe fn at(&self, i: usize, mask: u16) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's.
        unsafe { std::arch::x86_64::_mm512_maskz_loadu_ps(mask, self.0.as_ptr().add(i)) }
    }
}

/// [`Grad::Outer`] of exactly `T` terms: `Σ_t xs[t] · rows[t]` summed as it is.
#[cfg(target_arch = "x86_64")]
struct Terms<const T: usize> {
    xs: [std::arch::x86_64::__m512; T],
    rows: [*const f32; T],
}

#[cfg(target_arch = "x86_64")]
impl<const T: usize> Terms<T> {
    /// # Safety
    /// The CPU has AVX-512F; `xs` and `rows` have `T` elements.
    #[target_feature(enable = "avx512f")]
    unsafe fn new(xs: &[f32], rows: &[&[f32]]) -> Self {
        Terms {
            xs: std::array::from_fn(|t| std::arch::x86_64::_mm512_set1_ps(xs[t])),
            rows: std::array::from_fn(|t| rows[t].as_ptr()),
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl<const T: usize> Lanes for Terms<T> {
    #[inline]
    unsafe fn at(&self, i: usize, mask: u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's: each row is as long as the update's.
        unsafe {
            let mut acc = _mm512_setzero_ps();
            for t in 0..T {
                let dv = _mm512_maskz_loadu_ps(mask, self.rows[t].add(i));
                acc = _mm512_fmadd_ps(self.xs[t], dv, acc);
            }
            acc
        }
    }
}

/// One row of an optimizer's update, generic in where its gradient comes from.
#[cfg(target_arch = "x86_64")]
trait RowUpdate {
    /// Updates the row, 16 lanes at a time: whole vectors unmasked, then the rest.
    ///
    /// # Safety
    /// The CPU has AVX-512F; the gradient's rows are as long as the update's.
    unsafe fn run<G: Lanes>(self, g: &G);
}

/// Calls `lanes(i, mask)` over `0..n`: whole vectors with a constant full mask (which
/// the compiler drops), then the last partial one.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn by_vectors(n: usize, mut lanes16: impl FnMut(usize, u16)) {
    let whole = n - n % 16;
    for i in (0..whole).step_by(16) {
        lanes16(i, 0xffff);
    }
    if whole < n {
        lanes16(whole, lanes(whole, n));
    }
}

/// An Adam row: `k = [rate, 1 - β1, 1 - β2, ε]`.
#[cfg(target_arch = "x86_64")]
struct Adam<'a> {
    w: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    k: [f32; 4],
}

#[cfg(target_arch = "x86_64")]
impl RowUpdate for Adam<'_> {
    #[target_feature(enable = "avx512f")]
    unsafe fn run<G: Lanes>(self, g: &G) {
        use std::arch::x86_64::*;
        let Adam { w, m, v, k } = self;
        let n = w.len().min(m.len()).min(v.len());
        let [rate, b1, b2, eps] = k.map(|x| _mm512_set1_ps(x));
        by_vectors(n, |i, mask| {
            // SAFETY: lanes `i..i + 16` under `mask` lie within the slices (`i < n`, and
            // the mask stops at `n`, which the gradient's rows have too); masked-off lanes
            // are neither read nor written.
            unsafe {
                let gv = g.at(i, mask);
                let mv = _mm512_maskz_loadu_ps(mask, m.as_ptr().add(i));
                let vv = _mm512_maskz_loadu_ps(mask, v.as_ptr().add(i));
                let wv = _mm512_maskz_loadu_ps(mask, w.as_ptr().add(i));
                let mv = _mm512_add_ps(mv, _mm512_mul_ps(_mm512_sub_ps(gv, mv), b1));
                let gg = _mm512_mul_ps(gv, gv);
                let vv = _mm512_add_ps(vv, _mm512_mul_ps(_mm512_sub_ps(gg, vv), b2));
                let num = _mm512_mul_ps(mv, rate);
                let den = _mm512_add_ps(_mm512_sqrt_ps(vv), eps);
                let wv = _mm512_sub_ps(wv, _mm512_div_ps(num, den));
                _mm512_mask_storeu_ps(m.as_mut_ptr().add(i), mask, mv);
                _mm512_mask_storeu_ps(v.as_mut_ptr().add(i), mask, vv);
                _mm512_mask_storeu_ps(w.as_mut_ptr().add(i), mask, wv);
            }
        });
    }
}

/// An RMSprop row: `k = [rate, ρ, 1 - ρ, ε, momentum]`.
#[cfg(target_arch = "x86_64")]
struct Rmsprop<'a> {
    w: &'a mut [f32],
    v: &'a mut [f32],
    m: &'a mut [f32],
    k: [f32; 5],
}

#[cfg(target_arch = "x86_64")]
impl RowUpdate for Rmsprop<'_> {
    #[target_feature(enable = "avx512f")]
    unsafe fn run<G: Lanes>(self, g: &G) {
        use std::arch::x86_64::*;
        let Rmsprop { w, v, m, k } = self;
        let n = w.len().min(m.len()).min(v.len());
        let momentum = k[4] > 0.0;
        let [rate, rho, one_rho, eps, mom] = k.map(|x| _mm512_set1_ps(x));
        by_vectors(n, |i, mask| {
            // SAFETY: as in `Adam::run`.
            unsafe {
                let gv = g.at(i, mask);
                let vv = _mm512_maskz_loadu_ps(mask, v.as_ptr().add(i));
                let wv = _mm512_maskz_loadu_ps(mask, w.as_ptr().add(i));
                let gg = _mm512_mul_ps(_mm512_mul_ps(one_rho, gv), gv);
                let vv = _mm512_add_ps(_mm512_mul_ps(rho, vv), gg);
                _mm512_mask_storeu_ps(v.as_mut_ptr().add(i), mask, vv);
                let root = _mm512_sqrt_ps(_mm512_add_ps(vv, eps));
                let inc = _mm512_div_ps(_mm512_mul_ps(gv, rate), root);
                let step = if momentum {
                    let mv = _mm512_maskz_loadu_ps(mask, m.as_ptr().add(i));
                    let mv = _mm512_add_ps(_mm512_mul_ps(mom, mv), inc);
                    _mm512_mask_storeu_ps(m.as_mut_ptr().add(i), mask, mv);
                    mv
                } else {
                    inc
                };
                _mm512_mask_storeu_ps(w.as_mut_ptr().add(i), mask, _mm512_sub_ps(wv, step));
            }
        });
    }
}
