//! Tanh and sigmoid on the host's widest vectors (`lstmc_activate`), for the fused
//! kernels that stage their activations in a scratch row.

use super::simd::{Simd, VecKernel};

/// Tanh (`kind` 0) or sigmoid (1) of `n` floats into `x`: of the floats at `x`, in place,
/// when `terms` is 0, else of the left-to-right sum of the first `terms` of the rows
/// `t0..t3` (`((t0 + t1) + t2) + t3`), each `n` floats long. 16 or 8 lanes at a time
/// ([`super::simd`]), with the
/// operations of [`crate::jit::math::tanh`] and [`crate::jit::math::sigmoid`] (and of the fused
/// kernel's additions) in the same order, so the same bits as the generated code (IEEE
/// operations round the same way whatever the vector's width). Called only where the
/// CPU has AVX-512F or AVX2 ([`super::wide_updates`]), by the fused kernels that stage
/// their activations in a scratch row: Cranelift's 128-bit code runs each activation's
/// chain of multiply-adds on 4 lanes, this on 16 or 8.
#[allow(clippy::too_many_arguments)]
pub(super) extern "C" fn lstmc_activate(
    kind: u64,
    x: *mut f32,
    n: u64,
    terms: u64,
    t0: *const f32,
    t1: *const f32,
    t2: *const f32,
    t3: *const f32,
    ahead: *const f32,
) {
    let n = n as usize;
    // Asks for the next row of the term read farthest from its neighbours (see the
    // caller in `codegen/fused.rs`), whose lines the next calls read. A prefetch reads
    // nothing and never faults, so an address past the last row is harmless.
    #[cfg(target_arch = "x86_64")]
    if !ahead.is_null() {
        for line in (0..n).step_by(16) {
            // SAFETY: a prefetch hint, not a load: any address is allowed.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    ahead.wrapping_add(line) as *const i8,
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ahead;
    // SAFETY: generated code passes a scratch row of its own stack frame, `n` floats long.
    let x = unsafe { std::slice::from_raw_parts_mut(x, n) };
    // SAFETY: and `terms` rows of its planned buffers, each at least `n` floats long (rows
    // hold whole vectors), which the scratch row does not overlap.
    let t = |p: *const f32| unsafe { std::slice::from_raw_parts(p, n) };
    // The coefficients once per process, not per call (a W2 forward makes a dozen calls).
    static RATIONALS: std::sync::LazyLock<[crate::jit::math::Rational; 2]> =
        std::sync::LazyLock::new(|| {
            [
                crate::jit::math::tanh_rational(),
                crate::jit::math::sigmoid_rational(),
            ]
        });
    let sigmoid = kind != 0;
    let r = &RATIONALS[usize::from(sigmoid)];
    let isa =
        super::Isa::detect().expect("generated code calls lstmc_activate only with host vectors");
    // SAFETY: `isa` is this CPU's.
    unsafe {
        match terms {
            0 => isa.run(Activate {
                x,
                terms: [],
                r,
                sigmoid,
            }),
            1 => isa.run(Activate {
                x,
                terms: [t(t0)],
                r,
                sigmoid,
            }),
            2 => isa.run(Activate {
                x,
                terms: [t(t0), t(t1)],
                r,
                sigmoid,
            }),
            3 => isa.run(Activate {
                x,
                terms: [t(t0), t(t1), t(t2)],
                r,
                sigmoid,
            }),
            _ => isa.run(Activate {
                x,
                terms: [t(t0), t(t1), t(t2), t(t3)],
                r,
                sigmoid,
            }),
        }
    }
}

/// [`lstmc_activate`]'s loop: `sigmoid` or tanh with `r`'s coefficients, of the sum of
/// `terms` (of `x` itself without any).
struct Activate<'a, const T: usize> {
    x: &'a mut [f32],
    terms: [&'a [f32]; T],
    r: &'a crate::jit::math::Rational,
    sigmoid: bool,
}

impl<const T: usize> VecKernel for Activate<'_, T> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self, s: S) {
        let Activate {
            x,
            terms,
            r,
            sigmoid,
        } = self;
        let n = x.len();
        // SAFETY (of every vector operation): the caller's, the CPU has `S`'s set.
        unsafe {
            let (hi, lo) = (s.splat(r.clamp), s.splat(-r.clamp));
            let mut a = [s.zero(); 7];
            for (v, &c) in a.iter_mut().zip(&r.alpha) {
                *v = s.splat(c);
            }
            let mut b = [s.zero(); 4];
            for (v, &c) in b.iter_mut().zip(&r.beta) {
                *v = s.splat(c);
            }
            for i in (0..n).step_by(S::LANES) {
                // Lanes `i..min(i + LANES, n)` lie within `x` and every term (`n` is
                // their common length).
                let v = match terms.split_first() {
                    None => s.load_to(x.as_ptr(), i, n),
                    Some((first, rest)) => {
                        let mut v = s.load_to(first.as_ptr(), i, n);
                        for t in rest {
                            v = s.add(v, s.load_to(t.as_ptr(), i, n));
                        }
                        v
                    }
                };
                // `hi < v ? hi : v`, then `v < lo ? lo : v`: what `minps` and `maxps`
                // compute with their operands in this order (NaN passes through), as in
                // `math::clamp`.
                let v = s.min(hi, v);
                let v = s.max(lo, v);
                let y = s.mul(v, v);
                let y2 = s.mul(y, y);
                let y4 = s.mul(y2, y2);
                let p01 = s.fma(a[1], y, a[0]);
                let p23 = s.fma(a[3], y, a[2]);
                let p45 = s.fma(a[5], y, a[4]);
                let q01 = s.fma(b[1], y, b[0]);
                let q23 = s.fma(b[3], y, b[2]);
                let p03 = s.fma(p23, y2, p01);
                let p46 = s.fma(a[6], y2, p45);
                let p = s.fma(p46, y4, p03);
                let q = s.fma(q23, y2, q01);
                let out = if sigmoid {
                    s.div(s.fma(v, p, q), s.add(q, q))
                } else {
                    s.div(s.mul(v, p), q)
                };
                s.store_to(x.as_mut_ptr(), i, n, out);
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::simd::Isa;
    use super::Activate;
    use crate::jit::math::{sigmoid_rational, tanh_rational, Rational};

    /// One lane of [`Activate`] in scalar `f32`, the same operations in the same order.
    fn lane(x: f32, r: &Rational, sigmoid: bool) -> f32 {
        let v = if r.clamp < x { r.clamp } else { x };
        let v = if -r.clamp > v { -r.clamp } else { v };
        let (a, b) = (r.alpha, r.beta);
        let y = v * v;
        let y2 = y * y;
        let y4 = y2 * y2;
        let p03 = a[3].mul_add(y, a[2]).mul_add(y2, a[1].mul_add(y, a[0]));
        let p46 = a[6].mul_add(y2, a[5].mul_add(y, a[4]));
        let p = p46.mul_add(y4, p03);
        let q = b[3].mul_add(y, b[2]).mul_add(y2, b[1].mul_add(y, b[0]));
        if sigmoid {
            v.mul_add(p, q) / (q + q)
        } else {
            (v * p) / q
        }
    }

    #[test]
    fn activations_give_the_scalar_formulas_bits_on_every_vector_set() {
        for isa in Isa::available() {
            for (r, sigmoid) in [(tanh_rational(), false), (sigmoid_rational(), true)] {
                for n in [1, 7, 8, 9, 17, 31, 100] {
                    let rows: Vec<Vec<f32>> = (0..3)
                        .map(|t| {
                            (0..n)
                                .map(|i| (i as f32 - 40.0) * 0.37 + t as f32)
                                .collect()
                        })
                        .collect();
                    let sum: Vec<f32> = (0..n)
                        .map(|i| (rows[0][i] + rows[1][i]) + rows[2][i])
                        .collect();
                    let mut x = vec![0.0f32; n];
                    let terms = [&rows[0][..], &rows[1][..], &rows[2][..]];
                    // SAFETY: `isa` is this CPU's; the terms are as long as `x`.
                    unsafe {
                        isa.run(Activate {
                            x: &mut x,
                            terms,
                            r: &r,
                            sigmoid,
                        })
                    };
                    let mut y = sum.clone();
                    // SAFETY: as above.
                    unsafe {
                        isa.run(Activate {
                            x: &mut y,
                            terms: [],
                            r: &r,
                            sigmoid,
                        })
                    };
                    for i in 0..n {
                        let want = lane(sum[i], &r, sigmoid).to_bits();
                        assert_eq!(
                            x[i].to_bits(),
                            want,
                            "{isa:?} sigmoid {sigmoid} n {n} lane {i}"
                        );
                        assert_eq!(y[i].to_bits(), want, "{isa:?} in place, n {n} lane {i}");
                    }
                }
            }
        }
    }
}
