//! Optimizer updates in place on the host's widest vectors (`lstmc_update`): Adam's and
//! RMSprop's rules 16 or 8 lanes at a time ([`super::simd`]), with the same operations
//! in the same order as the generated 128-bit updates, and a few-row weight gradient
//! computed as they go.

use super::simd::{by_vectors, Simd, VecKernel};
use super::{split_rows, Handoff};

/// An optimizer's update of `rows × cols` parameters in place (rows `*s` elements
/// apart), 16 or 8 lanes at a time: the same operations in the same order as the generated
/// 128-bit code, so the same bits (square roots and divisions bound these loops on the
/// first host; on Zen 2, the chains of dependent operations, see `by_blocks!`).
/// Emitted only when [`super::wide_updates`] holds. `code` 0 is Adam, with
/// `k = [1 - β1, 1 - β2, ε, _]` and slots `m`, `v`; 1 is RMSprop, with
/// `k = [ρ, 1 - ρ, ε, momentum]` and slots velocity, momentum. `rate` is the step's
/// learning rate (Adam's bias-corrected).
///
/// With `t == 0` the gradient is stored at `g` (rows `gs` apart). Otherwise it is
/// `aᵀ · d`, with `a = g` of `t × rows` (rows `gs` apart) and `d` of `t × cols`, few rows
/// `t`, computed a few vectors ahead of the update, the way [`super::lstmc_few_rows`]
/// computes it (so the same bits), instead of stored whole: the tutorial's recurrent
/// kernel, its two slots and its gradient (256 KB each) overflow the first host's 1 MB
/// L2; without the gradient, they fit. With `threads > 1`, [`super::split_rows`] splits the rows.
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
    let isa =
        super::Isa::detect().expect("generated code calls lstmc_update only with host vectors");
    let fma_sqrt = super::simd::fma_sqrt();
    split_rows(rows as usize, threads, Handoff::WhenNear, &|_, rows| {
        let part = Part {
            code,
            w: w as *mut f32,
            ws,
            g: g as *const f32,
            gs,
            s1: s1 as *mut f32,
            s1s,
            s2: s2 as *mut f32,
            s2s,
            t,
            cols,
            d_rows,
            rows,
            k: [rate, k0, k1, k2, k3],
            fma_sqrt,
        };
        // SAFETY: `isa` is this CPU's; the part's operands are the planned slots, and its
        // rows its own.
        unsafe { isa.run(part) }
    });
}

/// The rows of one part of [`lstmc_update`] (all of its operands).
struct Part<'a> {
    code: u64,
    w: *mut f32,
    ws: usize,
    g: *const f32,
    gs: usize,
    s1: *mut f32,
    s1s: usize,
    s2: *mut f32,
    s2s: usize,
    t: usize,
    cols: usize,
    d_rows: &'a [&'a [f32]],
    rows: std::ops::Range<usize>,
    /// `[rate, k0, k1, k2, k3]`.
    k: [f32; 5],
    /// Every other vector's square root by [`Simd::sqrt_fma`] ([`super::simd::fma_sqrt`],
    /// [`Adam`]).
    fma_sqrt: bool,
}

impl VecKernel for Part<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self, s: S) {
        let Part {
            code,
            w,
            ws,
            g,
            gs,
            s1,
            s1s,
            s2,
            s2s,
            t,
            cols,
            d_rows,
            rows,
            k,
            fma_sqrt,
        } = self;
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
            let mut flat = [0.0f32; NARROW_CHUNK];
            for first in rows.clone().step_by(chunk) {
                let n = chunk.min(rows.end - first);
                if (1..=4).contains(&t) {
                    // SAFETY: the CPU has `S`'s set; `g` is `a`, of `t` rows with the
                    // columns `first..first + n`, and each of `d_rows` has `cols` lanes.
                    unsafe { outer_rows(s, &mut flat[..n * cols], g, gs, first, d_rows) };
                } else {
                    for i in 0..n {
                        // SAFETY: row `first + i` of the gradient (see `row_grad`), and
                        // the CPU has `S`'s set.
                        unsafe {
                            let grad = row_grad(g, gs, cols, first + i, xs, d_rows);
                            grad.store(s, &mut flat[i * cols..(i + 1) * cols])
                        };
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
                // SAFETY: the CPU has `S`'s set; the gradient's row is as long.
                unsafe {
                    update(
                        s,
                        code,
                        fma_sqrt,
                        k,
                        w,
                        Grad::Row(&flat[..n * cols]),
                        s1,
                        s2,
                    )
                };
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
            // SAFETY: row `r` of the gradient (see `row_grad`), as long as the others; the
            // CPU has `S`'s set.
            let grad = unsafe { row_grad(g, gs, cols, r, xs, d_rows) };
            // SAFETY: the CPU has `S`'s set; the gradient's row is as long.
            unsafe { update(s, code, fma_sqrt, k, w, grad, s1, s2) };
        }
    }
}

/// Updates the row `w` and its slots `s1`, `s2` by `grad`: Adam (`code` 0) or RMSprop,
/// `k` as in [`Part`], with every other vector's square root by [`Simd::sqrt_fma`] if
/// `fma_sqrt`.
///
/// # Safety
/// The CPU has `S`'s set; the gradient's rows are as long as `w`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn update<S: Simd>(
    s: S,
    code: u64,
    fma_sqrt: bool,
    k: [f32; 5],
    w: &mut [f32],
    grad: Grad,
    s1: &mut [f32],
    s2: &mut [f32],
) {
    // SAFETY: the caller's.
    unsafe {
        if fma_sqrt {
            update_by::<S, true>(s, code, k, w, grad, s1, s2)
        } else {
            update_by::<S, false>(s, code, k, w, grad, s1, s2)
        }
    }
}

/// [`update`], every other vector's square root by [`Simd::sqrt_fma`] if `FMA_SQRT`.
///
/// # Safety
/// As [`update`]'s.
#[inline(always)]
unsafe fn update_by<S: Simd, const FMA_SQRT: bool>(
    s: S,
    code: u64,
    k: [f32; 5],
    w: &mut [f32],
    grad: Grad,
    s1: &mut [f32],
    s2: &mut [f32],
) {
    let [rate, k0, k1, k2, _] = k;
    // SAFETY: the caller's.
    unsafe {
        if code == 0 {
            grad.update(
                s,
                Adam::<FMA_SQRT> {
                    w,
                    m: s1,
                    v: s2,
                    k: [rate, k0, k1, k2],
                },
            )
        } else {
            grad.update(s, Rmsprop::<FMA_SQRT> { w, v: s1, m: s2, k })
        }
    }
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

/// Rows `first..first + n` of the gradient `aᵀ · d` of rows narrower than 16, one after
/// another into `flat` (`n × cols`, `cols = flat.len() / n < 16`): each row one or two
/// vectors, `Σ_t a[t, r] · d[t]` summed as [`Grad::Outer`] sums it (so the same bits),
/// with the `d` rows in registers. Row by row through [`row_grad`], a call and a
/// dispatch per row of 12 took the tutorial's Dense kernel update 0.8 of its 1.3 µs.
///
/// # Safety
/// The CPU has `S`'s set; `a` has `d.len() <= 4` rows (`a_rs` apart) with the columns
/// `first..first + n`; each row of `d` has `cols` elements.
#[inline(always)]
unsafe fn outer_rows<S: Simd>(
    s: S,
    flat: &mut [f32],
    a: *const f32,
    a_rs: usize,
    first: usize,
    d: &[&[f32]],
) {
    let Some(cols) = d.first().map(|r| r.len()) else {
        return;
    };
    // SAFETY (of every vector operation): the caller's; loads and stores stop at `cols`.
    unsafe {
        let halves = [cols.min(S::LANES), cols.saturating_sub(S::LANES)];
        let mut dv = [[s.zero(); 2]; 4];
        for (v, row) in dv.iter_mut().zip(d) {
            for h in 0..2 {
                if halves[h] > 0 {
                    v[h] = s.load_n(row.as_ptr().add(h * S::LANES), halves[h]);
                }
            }
        }
        for (i, out) in flat.chunks_exact_mut(cols).enumerate() {
            for h in 0..2 {
                if halves[h] == 0 {
                    continue;
                }
                let mut acc = s.zero();
                for (t, v) in dv.iter().enumerate().take(d.len()) {
                    // `a[t, first + i]`, the caller's.
                    let x = *a.add(t * a_rs + first + i);
                    acc = s.fma(s.splat(x), v[h], acc);
                }
                s.store_n(out.as_mut_ptr().add(h * S::LANES), halves[h], acc);
            }
        }
    }
}

/// Elements of narrow rows that [`lstmc_update`] updates as one row.
const NARROW_CHUNK: usize = 1024;

/// Where an update row's gradient comes from, a vector at a time.
enum Grad<'a> {
    /// A stored row.
    Row(&'a [f32]),
    /// `Σ_t xs[t] · rows[t]`: a row of `aᵀ · d`, summed in order of `t` from zero with one
    /// fused multiply-add per term (as [`super::FewRows`]'s `aᵀ · w` does).
    Outer {
        xs: &'a [f32],
        rows: &'a [&'a [f32]],
    },
}

impl Grad<'_> {
    /// The whole row into `out` (as long as the row).
    ///
    /// # Safety
    /// The CPU has `S`'s set.
    #[inline(always)]
    unsafe fn store<S: Simd>(&self, s: S, out: &mut [f32]) {
        let n = out.len();
        by_vectors!(S, n, |i, len| {
            // SAFETY: `len` lanes from `i` lie within `out` and the gradient's rows (of
            // length `n`).
            unsafe {
                let v = self.at(s, i, len);
                s.store_n(out.as_mut_ptr().add(i), len, v);
            }
        });
    }

    /// Runs `row` with this gradient as a source of lanes specialized for its kind: a
    /// stored row, or an outer product of one to four terms with their broadcasts and
    /// row addresses held in registers (the tutorial's recurrent kernel: four). In
    /// place of a loop over a slice of terms per vector, that made W2's Adam update
    /// 15% faster. The sums are the same, so the bits are too.
    ///
    /// # Safety
    /// The CPU has `S`'s set; the gradient's rows are as long as the update's.
    #[inline(always)]
    unsafe fn update<S: Simd>(&self, s: S, row: impl RowUpdate) {
        // SAFETY (of each call): the caller's.
        unsafe {
            match *self {
                Grad::Row(g) => row.run(s, &Stored(g)),
                Grad::Outer { xs, rows } => match xs.len() {
                    1 => row.run(s, &Terms::<S, 1>::new(s, xs, rows)),
                    2 => row.run(s, &Terms::<S, 2>::new(s, xs, rows)),
                    3 => row.run(s, &Terms::<S, 3>::new(s, xs, rows)),
                    4 => row.run(s, &Terms::<S, 4>::new(s, xs, rows)),
                    _ => row.run(s, self),
                },
            }
        }
    }
}

/// A gradient row, a vector at a time.
trait Lanes<S: Simd> {
    /// Lanes `i..i + len` (`len <= LANES`, zeros beyond), which lie within the row.
    ///
    /// # Safety
    /// The CPU has `S`'s set, and the lanes lie within the row.
    unsafe fn at(&self, s: S, i: usize, len: usize) -> S::V;
}

impl<S: Simd> Lanes<S> for Grad<'_> {
    #[inline(always)]
    unsafe fn at(&self, s: S, i: usize, len: usize) -> S::V {
        // SAFETY: the caller's: the lanes lie within the rows (all of the update's width).
        unsafe {
            match self {
                Grad::Row(g) => Stored(g).at(s, i, len),
                Grad::Outer { xs, rows } => {
                    let mut acc = s.zero();
                    for (x, row) in xs.iter().zip(rows.iter()) {
                        let dv = s.load_n(row.as_ptr().add(i), len);
                        acc = s.fma(s.splat(*x), dv, acc);
                    }
                    acc
                }
            }
        }
    }
}

/// A stored gradient row.
struct Stored<'a>(&'a [f32]);

impl<S: Simd> Lanes<S> for Stored<'_> {
    #[inline(always)]
    unsafe fn at(&self, s: S, i: usize, len: usize) -> S::V {
        // SAFETY: the caller's.
        unsafe { s.load_n(self.0.as_ptr().add(i), len) }
    }
}

/// [`Grad::Outer`] of exactly `T` terms: `Σ_t xs[t] · rows[t]` summed as it is.
struct Terms<S: Simd, const T: usize> {
    xs: [S::V; T],
    rows: [*const f32; T],
}

impl<S: Simd, const T: usize> Terms<S, T> {
    /// # Safety
    /// The CPU has `S`'s set; `xs` and `rows` have `T` elements.
    #[inline(always)]
    unsafe fn new(s: S, xs: &[f32], rows: &[&[f32]]) -> Self {
        // SAFETY: the caller's.
        let mut splats = [unsafe { s.zero() }; T];
        let mut ptrs = [std::ptr::null(); T];
        for t in 0..T {
            // SAFETY: the caller's.
            splats[t] = unsafe { s.splat(xs[t]) };
            ptrs[t] = rows[t].as_ptr();
        }
        Terms {
            xs: splats,
            rows: ptrs,
        }
    }
}

impl<S: Simd, const T: usize> Lanes<S> for Terms<S, T> {
    #[inline(always)]
    unsafe fn at(&self, s: S, i: usize, len: usize) -> S::V {
        // SAFETY: the caller's: each row is as long as the update's.
        unsafe {
            let mut acc = s.zero();
            for t in 0..T {
                let dv = s.load_n(self.rows[t].add(i), len);
                acc = s.fma(self.xs[t], dv, acc);
            }
            acc
        }
    }
}

/// Vectors of gradient that `by_blocks!` computes before it updates any of them.
const BLOCK: usize = 4;

/// Runs `$body` with `$i`, `$len` and `$gv`, the gradient's lanes `$i..$i + $len`, and
/// `$b`, the vector's place in its block ([`BLOCK`] for the rest), over `$n` lanes, a
/// vector at a time: the gradient of [`BLOCK`] whole vectors first, then their updates,
/// then the rest one vector at a time. An outer product's terms are a chain of dependent
/// multiply-adds that an update's own chain (a square root, then a division) follows;
/// vector by vector, the core's scheduler filled up with both chains, and W2's update of
/// its recurrent kernel took 40 µs a call standalone on Zen 2.
/// Computed four vectors ahead, 31.5 µs (with a stored gradient: 29). The sums are the
/// same, so the bits are too. A macro, as [`by_vectors`] is: a closure would not be
/// compiled with the caller's vector set.
///
/// Safety: the CPU has `S`'s set, and the gradient's rows and the body's slices have `$n`
/// lanes; the caller wraps the use in `unsafe`.
macro_rules! by_blocks {
    ($s:ident: $S:ty, $n:expr, $g:expr, |$i:ident, $len:ident, $gv:ident, $b:ident| $body:block) => {{
        let n: usize = $n;
        let lanes = <$S as Simd>::LANES;
        let blocks = n - n % (lanes * BLOCK);
        for first in (0..blocks).step_by(lanes * BLOCK) {
            let mut gs = [$s.zero(); BLOCK];
            for (b, gv) in gs.iter_mut().enumerate() {
                *gv = $g.at($s, first + b * lanes, lanes);
            }
            for ($b, $gv) in gs.into_iter().enumerate() {
                let ($i, $len) = (first + $b * lanes, lanes);
                $body
            }
        }
        by_vectors!($S, n - blocks, |rest, $len| {
            let $i = blocks + rest;
            let $gv = $g.at($s, $i, $len);
            let $b = BLOCK;
            $body
        });
    }};
}

/// One row of an optimizer's update, generic in where its gradient comes from.
trait RowUpdate {
    /// Updates the row (through `by_blocks!`).
    ///
    /// # Safety
    /// The CPU has `S`'s set; the gradient's rows are as long as the update's.
    unsafe fn run<S: Simd, G: Lanes<S>>(self, s: S, g: &G);
}

/// An Adam row: `k = [rate, 1 - β1, 1 - β2, ε]`. If `FMA_SQRT`, the odd vectors of each
/// block of `by_blocks!` take their square roots by [`Simd::sqrt_fma`] on the multiply-add
/// ports, the others by `vsqrtps` on the divider, beside the division. All on the ports,
/// they were the ports' load that bounded the update (about 26 operations a vector); half
/// and half, the divider's load and the ports' come closer. On the Xeon of
/// [`super::simd::fma_sqrt`], W2's update of its recurrent kernel in a standalone loop,
/// alternating blocks of 200 calls, took 0.95–0.96 times as long as with every root on
/// the ports (median ratio of 40 blocks, three runs; with a quarter of the roots on the
/// divider 0.93–0.94, and in W2's epoch no different from half in five pairs), and W2's
/// epoch at one thread 2.34–2.47 ms against 2.49–3.06 ms (four alternating pairs,
/// `lstmc bench W2 --phase train`). The same bits either way.
struct Adam<'a, const FMA_SQRT: bool> {
    w: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    k: [f32; 4],
}

impl<const FMA_SQRT: bool> RowUpdate for Adam<'_, FMA_SQRT> {
    #[inline(always)]
    unsafe fn run<S: Simd, G: Lanes<S>>(self, s: S, g: &G) {
        let Adam { w, m, v, k } = self;
        let n = w.len().min(m.len()).min(v.len());
        // SAFETY: the CPU has `S`'s set (the caller's).
        let [rate, b1, b2, eps] =
            unsafe { [s.splat(k[0]), s.splat(k[1]), s.splat(k[2]), s.splat(k[3])] };
        // SAFETY (of `by_blocks!`' operations): lanes `i..i + len` lie within the slices
        // (`i + len <= n`, which the gradient's rows have too); no lane beyond is read or
        // written.
        unsafe {
            by_blocks!(s: S, n, g, |i, len, gv, b| {
                let mv = s.load_n(m.as_ptr().add(i), len);
                let vv = s.load_n(v.as_ptr().add(i), len);
                let wv = s.load_n(w.as_ptr().add(i), len);
                let mv = s.add(mv, s.mul(s.sub(gv, mv), b1));
                let gg = s.mul(gv, gv);
                let vv = s.add(vv, s.mul(s.sub(gg, vv), b2));
                let num = s.mul(mv, rate);
                let root = root::<S, FMA_SQRT>(s, vv, b);
                let den = s.add(root, eps);
                let wv = s.sub(wv, s.div(num, den));
                s.store_n(m.as_mut_ptr().add(i), len, mv);
                s.store_n(v.as_mut_ptr().add(i), len, vv);
                s.store_n(w.as_mut_ptr().add(i), len, wv);
            })
        }
    }
}

/// `√x` for the vector at place `b` of its block (`by_blocks!`): by [`Simd::sqrt_fma`] on
/// the multiply-add ports for the odd places if `FMA_SQRT`, else by `vsqrtps` on the
/// divider ([`Adam`]). The same bits either way.
///
/// # Safety
/// The CPU has `S`'s set.
#[inline(always)]
unsafe fn root<S: Simd, const FMA_SQRT: bool>(s: S, x: S::V, b: usize) -> S::V {
    // SAFETY: the caller's.
    unsafe {
        if FMA_SQRT && b % 2 == 1 {
            s.sqrt_fma(x)
        } else {
            s.sqrt(x)
        }
    }
}

/// An RMSprop row: `k = [rate, ρ, 1 - ρ, ε, momentum]`; square roots as [`Adam`]'s.
struct Rmsprop<'a, const FMA_SQRT: bool> {
    w: &'a mut [f32],
    v: &'a mut [f32],
    m: &'a mut [f32],
    k: [f32; 5],
}

impl<const FMA_SQRT: bool> RowUpdate for Rmsprop<'_, FMA_SQRT> {
    #[inline(always)]
    unsafe fn run<S: Simd, G: Lanes<S>>(self, s: S, g: &G) {
        let Rmsprop { w, v, m, k } = self;
        let n = w.len().min(m.len()).min(v.len());
        let momentum = k[4] > 0.0;
        // SAFETY: the CPU has `S`'s set (the caller's).
        let [rate, rho, one_rho, eps, mom] = unsafe {
            [
                s.splat(k[0]),
                s.splat(k[1]),
                s.splat(k[2]),
                s.splat(k[3]),
                s.splat(k[4]),
            ]
        };
        // SAFETY: as in `Adam::run`.
        unsafe {
            by_blocks!(s: S, n, g, |i, len, gv, b| {
                let vv = s.load_n(v.as_ptr().add(i), len);
                let wv = s.load_n(w.as_ptr().add(i), len);
                let gg = s.mul(s.mul(one_rho, gv), gv);
                let vv = s.add(s.mul(rho, vv), gg);
                s.store_n(v.as_mut_ptr().add(i), len, vv);
                let sum = s.add(vv, eps);
                let root = root::<S, FMA_SQRT>(s, sum, b);
                let inc = s.div(s.mul(gv, rate), root);
                let step = if momentum {
                    let mv = s.load_n(m.as_ptr().add(i), len);
                    let mv = s.add(s.mul(mom, mv), inc);
                    s.store_n(m.as_mut_ptr().add(i), len, mv);
                    mv
                } else {
                    inc
                };
                s.store_n(w.as_mut_ptr().add(i), len, s.sub(wv, step));
            })
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::simd::Isa;
    use super::Part;

    /// Deterministic values in `[lo, lo + 1)`.
    fn values(n: usize, seed: u64, lo: f32) -> Vec<f32> {
        let unit = super::super::kernel_tests::values(n, seed);
        unit.iter().map(|x| lo + (x + 1.0) / 2.0).collect()
    }

    /// One update of `rows × cols` (rows `stride` apart) with a gradient stored (`t` 0)
    /// or of `t` outer-product terms, on `isa`, against the rule in scalar `f32` with
    /// the same operations in the same order: the same bits, with square roots by
    /// `Simd::sqrt_fma` or not.
    #[allow(clippy::needless_range_loop)] // `(r, j)` index four matrices and the padding
    #[allow(clippy::too_many_arguments)]
    fn check(
        isa: Isa,
        fma_sqrt: bool,
        code: u64,
        momentum: f32,
        t: usize,
        rows: usize,
        cols: usize,
        stride: usize,
    ) {
        let n = rows * stride;
        let (mut w, mut s1, mut s2) = (values(n, 1, -0.5), values(n, 2, -0.5), values(n, 3, 0.0));
        let (w0, s10, s20) = (w.clone(), s1.clone(), s2.clone());
        // Stored: `rows × stride`; outer: `a` of `t × (rows + 1)` and `d` of `t × cols`.
        let g = if t == 0 {
            values(n, 4, -0.5)
        } else {
            values(t * (rows + 1), 4, -0.5)
        };
        let gs = if t == 0 { stride } else { rows + 1 };
        let d = values(t * cols, 5, -0.5);
        let d_rows: Vec<&[f32]> = d.chunks(cols).collect();
        let k = if code == 0 {
            [1e-3, 0.1, 0.001, 1e-7, 0.0]
        } else {
            [1e-3, 0.9, 0.1, 1e-7, momentum]
        };
        let part = Part {
            code,
            w: w.as_mut_ptr(),
            ws: stride,
            g: g.as_ptr(),
            gs,
            s1: s1.as_mut_ptr(),
            s1s: stride,
            s2: s2.as_mut_ptr(),
            s2s: stride,
            t,
            cols,
            d_rows: &d_rows,
            rows: 0..rows,
            k,
            fma_sqrt,
        };
        // SAFETY: `isa` is this CPU's; the slots hold the shapes above.
        unsafe { isa.run(part) };
        let [rate, k0, k1, k2, k3] = k;
        for r in 0..rows {
            for j in 0..stride {
                let i = r * stride + j;
                let (mut wv, mut a, mut b) = (w0[i], s10[i], s20[i]);
                if j < cols {
                    let gv = if t == 0 {
                        g[i]
                    } else {
                        (0..t).fold(0.0f32, |acc, q| g[q * gs + r].mul_add(d_rows[q][j], acc))
                    };
                    if code == 0 {
                        a += (gv - a) * k0;
                        b += (gv * gv - b) * k1;
                        wv -= (a * rate) / (b.sqrt() + k2);
                    } else {
                        a = k0 * a + (k1 * gv) * gv;
                        let inc = (gv * rate) / (a + k2).sqrt();
                        let step = if k3 > 0.0 {
                            b = k3 * b + inc;
                            b
                        } else {
                            inc
                        };
                        wv -= step;
                    }
                }
                let what = format!(
                    "{isa:?} fma_sqrt {fma_sqrt} code {code} t {t} {rows}×{cols}/{stride} ({r}, {j})"
                );
                assert_eq!(w[i].to_bits(), wv.to_bits(), "w {what}");
                assert_eq!(s1[i].to_bits(), a.to_bits(), "slot 1 {what}");
                assert_eq!(s2[i].to_bits(), b.to_bits(), "slot 2 {what}");
            }
        }
    }

    #[test]
    fn updates_give_the_scalar_rules_bits_on_every_vector_set() {
        for (isa, fma_sqrt) in Isa::available()
            .into_iter()
            .flat_map(|i| [(i, false), (i, true)])
        {
            for (code, momentum) in [(0, 0.0), (1, 0.0), (1, 0.9)] {
                for t in 0..=5 {
                    for cols in [3, 12, 19, 40, 150] {
                        check(isa, fma_sqrt, code, momentum, t, 5, cols, cols);
                        check(isa, fma_sqrt, code, momentum, t, 5, cols, cols + 2);
                    }
                    // Narrow rows over several chunks of `NARROW_CHUNK` (the last one short).
                    for cols in [3, 12] {
                        check(
                            isa,
                            fma_sqrt,
                            code,
                            momentum,
                            t,
                            2 * super::NARROW_CHUNK / cols + 7,
                            cols,
                            cols,
                        );
                    }
                }
            }
        }
    }
}
