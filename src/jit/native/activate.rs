//! Tanh and sigmoid on 512-bit host code (`lstmc_activate`), for the fused kernels that
//! stage their activations in a scratch row.

#[cfg(target_arch = "x86_64")]
use super::lanes;

/// Tanh (`kind` 0) or sigmoid (1) of `n` floats into `x`: of the floats at `x`, in place,
/// when `terms` is 0, else of the left-to-right sum of the first `terms` of the rows
/// `t0..t3` (`((t0 + t1) + t2) + t3`), each `n` floats long. 16 lanes at a time, with the
/// operations of [`crate::jit::math::tanh`] and [`crate::jit::math::sigmoid`] (and of the fused
/// kernel's additions) in the same order, so the same bits as the generated code (IEEE
/// operations round the same way whatever the vector's width). Called only where the
/// CPU has AVX-512F ([`super::wide_updates`]), by the fused kernels that stage their
/// activations in a scratch row: Cranelift's 128-bit code runs each activation's chain
/// of multiply-adds on 4 lanes, this on 16, with twice the registers.
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
) {
    let n = n as usize;
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
    #[cfg(target_arch = "x86_64")]
    // SAFETY: generated code calls this only when the CPU has AVX-512F.
    unsafe {
        match terms {
            0 => activate_avx512(x, [], r, sigmoid),
            1 => activate_avx512(x, [t(t0)], r, sigmoid),
            2 => activate_avx512(x, [t(t0), t(t1)], r, sigmoid),
            3 => activate_avx512(x, [t(t0), t(t1), t(t2)], r, sigmoid),
            _ => activate_avx512(x, [t(t0), t(t1), t(t2), t(t3)], r, sigmoid),
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, t, terms, t0, t1, t2, t3, r, sigmoid);
}

/// [`lstmc_activate`]'s loop: `sigmoid` or tanh with `r`'s coefficients, of the sum of
/// `terms` (of `x` itself without any).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn activate_avx512<const T: usize>(
    x: &mut [f32],
    terms: [&[f32]; T],
    r: &crate::jit::math::Rational,
    sigmoid: bool,
) {
    use std::arch::x86_64::*;
    let n = x.len();
    let (hi, lo) = (_mm512_set1_ps(r.clamp), _mm512_set1_ps(-r.clamp));
    let a = r.alpha.map(|c| _mm512_set1_ps(c));
    let b = r.beta.map(|c| _mm512_set1_ps(c));
    for i in (0..n).step_by(16) {
        let mask = lanes(i, n);
        // SAFETY: lanes `i..i + 16` under `mask` lie within `x` and every term (the mask
        // stops at `n`, their common length).
        unsafe {
            let v = match terms.split_first() {
                None => _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i)),
                Some((first, rest)) => {
                    let mut v = _mm512_maskz_loadu_ps(mask, first.as_ptr().add(i));
                    for t in rest {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, t.as_ptr().add(i)));
                    }
                    v
                }
            };
            // `hi < v ? hi : v`, then `v < lo ? lo : v`: what `minps` and `maxps` compute
            // with their operands in this order (NaN passes through), as in `math::clamp`.
            let v = _mm512_min_ps(hi, v);
            let v = _mm512_max_ps(lo, v);
            let y = _mm512_mul_ps(v, v);
            let y2 = _mm512_mul_ps(y, y);
            let y4 = _mm512_mul_ps(y2, y2);
            let p01 = _mm512_fmadd_ps(a[1], y, a[0]);
            let p23 = _mm512_fmadd_ps(a[3], y, a[2]);
            let p45 = _mm512_fmadd_ps(a[5], y, a[4]);
            let q01 = _mm512_fmadd_ps(b[1], y, b[0]);
            let q23 = _mm512_fmadd_ps(b[3], y, b[2]);
            let p03 = _mm512_fmadd_ps(p23, y2, p01);
            let p46 = _mm512_fmadd_ps(a[6], y2, p45);
            let p = _mm512_fmadd_ps(p46, y4, p03);
            let q = _mm512_fmadd_ps(q23, y2, q01);
            let out = if sigmoid {
                _mm512_div_ps(_mm512_fmadd_ps(v, p, q), _mm512_add_ps(q, q))
            } else {
                _mm512_div_ps(_mm512_mul_ps(v, p), q)
            };
            _mm512_mask_storeu_ps(x.as_mut_ptr().add(i), mask, out);
        }
    }
}
