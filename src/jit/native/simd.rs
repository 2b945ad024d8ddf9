//! The host kernels' vectors, one body for two instruction sets: AVX-512F (16 lanes,
//! masked loads and stores) and AVX2 with FMA (8 lanes; a partial vector is loaded and
//! stored by 128-, 64- and 32-bit pieces, not by `vmaskmovps`, whose stores Agner Fog's
//! tables give as slow on AMD's cores, nor through a copy that calls `memcpy`). A
//! kernel is written once, generic in [`Simd`], and instantiated inside a
//! `#[target_feature]` function of each set ([`Isa::run`]), where its intrinsics
//! inline. Every operation rounds as IEEE says whatever the width, so both give the
//! same bits as the generated 128-bit code, except where a kernel sums across lanes
//! ([`Simd::sum`]).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The vector instructions the host kernels use on this CPU, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 16 lanes.
    Avx512,
    /// AVX2 and FMA: 8 lanes.
    Avx2,
}

impl Isa {
    /// The widest set this CPU has, once per process.
    pub fn detect() -> Option<Isa> {
        static ISA: std::sync::LazyLock<Option<Isa>> = std::sync::LazyLock::new(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Some(Isa::Avx512);
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    return Some(Isa::Avx2);
                }
            }
            None
        });
        *ISA
    }

    /// Every set this CPU has, widest first (for tests of both bodies).
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        match Isa::detect() {
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx512) if std::arch::is_x86_feature_detected!("avx2") => {
                vec![Isa::Avx512, Isa::Avx2]
            }
            found => found.into_iter().collect(),
        }
    }

    /// Runs `kernel` with this set's vectors.
    ///
    /// # Safety
    /// The CPU has this set (it came from [`Isa::detect`] or `Isa::available` (in tests)).
    #[inline(always)]
    pub unsafe fn run<K: VecKernel>(self, kernel: K) -> K::Output {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn avx512<K: VecKernel>(kernel: K) -> K::Output {
                // SAFETY: this function runs only where the CPU has AVX-512F.
                unsafe { kernel.run(Avx512) }
            }
            #[target_feature(enable = "avx2,fma")]
            fn avx2<K: VecKernel>(kernel: K) -> K::Output {
                // SAFETY: this function runs only where the CPU has AVX2 and FMA.
                unsafe { kernel.run(Avx2) }
            }
            // SAFETY: the caller's: the CPU has the set.
            unsafe {
                match self {
                    Isa::Avx512 => avx512(kernel),
                    Isa::Avx2 => avx2(kernel),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = kernel;
            unreachable!("no host vector set off x86-64")
        }
    }
}

/// Whether Adam's and RMSprop's updates take square roots with [`Simd::sqrt_fma`] (the same
/// bits; every other vector's, see `update::Adam`), once per process: where the CPU has
/// AVX-512F and runs two 512-bit multiply-adds a cycle ([`full_width_fma`]). There the
/// divider takes about 11 cycles a 512-bit square root and 10 a division, and Adam needs
/// both, while the multiply-add ports have room for nine more operations. On a Xeon (family
/// 6, model 207), W2's update of its recurrent kernel (65,536 weights, its gradient's four
/// outer-product terms computed as it goes) in a standalone loop, alternating blocks of 200
/// calls: 29.8–30.5 µs a call at best with `vsqrtps`, 26.3–26.9 µs with these nine
/// operations; in each of three runs the median of 40 blocks' ratios was 1.12× (p10
/// 1.03–1.07×). In blocks of 2000 calls they were slower at times (35.5–41.0 against
/// 32.6–37.9 µs), as the host's speed moved. W2's epoch, in 14 alternating pairs at one
/// thread, was faster in 13. Where a 512-bit multiply-add takes both halves of the vector
/// units (Zen 4, and Xeons with one 512-bit unit) the nine operations cost twice the port
/// time, and the updates keep `vsqrtps`. On the first host (a Xeon with 1 MB of L2,
/// 2026-12-05, its 512-bit units not counted) a square root by `rsqrt14` and Newton, with
/// the division by a refined reciprocal, made the same standalone update 23% slower
/// (README, "What bounds W2").
pub fn fma_sqrt() -> bool {
    static FMA: std::sync::LazyLock<bool> = std::sync::LazyLock::new(full_width_fma);
    *FMA
}

/// Whether this CPU has AVX-512F and runs 512-bit multiply-adds at the rate of 256-bit
/// ones (two a cycle): twelve independent chains of each, timed in turn, the fastest of
/// five tries each (about 0.3 ms, once per process); full width below 1.5 times the
/// 256-bit time. Where a 512-bit operation takes the two 256-bit halves of the units
/// (Zen 4, Xeons with one 512-bit unit), it takes twice as long. On the Xeon of
/// [`fma_sqrt`], in five processes: 23.9–25.6 µs at 512 bits, 20.2–22.2 µs at 256.
fn full_width_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        /// Nanoseconds for `n` rounds of 12 multiply-adds on `S`'s vectors.
        struct Chains(u32);
        impl VecKernel for Chains {
            type Output = u128;
            #[inline(always)]
            unsafe fn run<S: Simd>(self, s: S) -> u128 {
                // SAFETY (of each operation): the CPU has `S`'s set (the caller's).
                unsafe {
                    // Opaque to the compiler, which would otherwise fold the chains.
                    let (b, c) = std::hint::black_box((s.splat(0.999_9), s.splat(1e-4)));
                    let mut acc = std::hint::black_box([s.splat(1.0); 12]);
                    let start = std::time::Instant::now();
                    for _ in 0..std::hint::black_box(self.0) {
                        for a in &mut acc {
                            *a = s.fma(*a, b, c);
                        }
                    }
                    let took = start.elapsed().as_nanos();
                    std::hint::black_box(acc);
                    took
                }
            }
        }
        let avx2_fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if Isa::detect() != Some(Isa::Avx512) || !avx2_fma {
            return false;
        }
        const ROUNDS: u32 = 10_000;
        let (mut wide, mut half) = (u128::MAX, u128::MAX);
        for _ in 0..5 {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (above).
            unsafe {
                wide = wide.min(Isa::Avx512.run(Chains(ROUNDS)));
                half = half.min(Isa::Avx2.run(Chains(ROUNDS)));
            }
        }
        // Equal rates: `wide` about `half`; half the rate: twice.
        wide * 4 < half * 6
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A kernel body, generic in its vectors.
pub trait VecKernel {
    type Output;
    /// # Safety
    /// The CPU has `S`'s instruction set; the kernel's own conditions hold.
    unsafe fn run<S: Simd>(self, s: S) -> Self::Output;
}

/// One instruction set's vectors of `f32`. Every method is `#[inline(always)]`, to be
/// inlined into a function with the set enabled ([`Isa::run`]); calling one elsewhere
/// is undefined behaviour, hence `unsafe`.
pub trait Simd: Copy {
    /// A vector of [`Simd::LANES`] floats.
    type V: Copy;
    /// Floats per vector.
    const LANES: usize;

    /// The vector of `x` in every lane.
    unsafe fn splat(self, x: f32) -> Self::V;
    /// Zeros.
    unsafe fn zero(self) -> Self::V;
    /// `LANES` floats from `p`.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// The first `n < LANES` floats from `p`, zeros in the other lanes; none beyond read.
    unsafe fn load_part(self, p: *const f32, n: usize) -> Self::V;
    /// `LANES` floats to `p`.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// The first `n < LANES` lanes of `v` to `p`; none beyond written.
    unsafe fn store_part(self, p: *mut f32, n: usize, v: Self::V);
    unsafe fn add(self, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(self, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sqrt(self, a: Self::V) -> Self::V;
    /// The same bits as [`Simd::sqrt`] in every lane, for every input, computed on the
    /// multiply-add units where this set can ([`Avx512::sqrt_fma`]); else `sqrt` itself.
    #[inline(always)]
    unsafe fn sqrt_fma(self, a: Self::V) -> Self::V {
        // SAFETY: the caller's.
        unsafe { self.sqrt(a) }
    }
    /// `a < b ? a : b` lane by lane (`minps`: `b` when either is NaN).
    unsafe fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a > b ? a : b` lane by lane (`maxps`: `b` when either is NaN).
    unsafe fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`, rounded once.
    unsafe fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The sum of the lanes (in a tree of this set's own order).
    unsafe fn sum(self, a: Self::V) -> f32;
    /// `p[0], p[stride], …, p[(LANES - 1) · stride]`, with `LANES · stride` an `i32`.
    unsafe fn gather(self, p: *const f32, stride: usize) -> Self::V;

    /// The first `len <= LANES` floats from `p` (zeros beyond): a whole vector when `len`
    /// is `LANES`, which folds away where `len` is a constant.
    #[inline(always)]
    unsafe fn load_n(self, p: *const f32, len: usize) -> Self::V {
        // SAFETY: the caller's: `len` floats at `p` are readable.
        unsafe {
            if len >= Self::LANES {
                self.load(p)
            } else {
                self.load_part(p, len)
            }
        }
    }

    /// The first `len <= LANES` lanes of `v` to `p`.
    #[inline(always)]
    unsafe fn store_n(self, p: *mut f32, len: usize, v: Self::V) {
        // SAFETY: the caller's: `len` floats at `p` are writable.
        unsafe {
            if len >= Self::LANES {
                self.store(p, v)
            } else {
                self.store_part(p, len, v)
            }
        }
    }

    /// Lanes `i..min(i + LANES, n)` from `p + i` (zeros beyond `n`).
    #[inline(always)]
    unsafe fn load_to(self, p: *const f32, i: usize, n: usize) -> Self::V {
        // SAFETY: the caller's: `p + i .. p + n` are readable.
        unsafe { self.load_n(p.add(i), (n - i).min(Self::LANES)) }
    }

    /// Lanes `i..min(i + LANES, n)` of `v` to `p + i`.
    #[inline(always)]
    unsafe fn store_to(self, p: *mut f32, i: usize, n: usize, v: Self::V) {
        // SAFETY: the caller's: `p + i .. p + n` are writable.
        unsafe { self.store_n(p.add(i), (n - i).min(Self::LANES), v) }
    }
}

/// Runs `$body` for the vectors of `0..$n` with `$i` their first lane and `$len` their
/// length: whole ones with the constant `$len = LANES` (so that their loads and stores
/// are plain), then the last partial one. A macro, not a function taking a closure: a
/// closure is a function of its own, compiled without the kernel's target features,
/// whose intrinsics would not inline.
macro_rules! by_vectors {
    ($s:ty, $n:expr, |$i:ident, $len:ident| $body:block) => {{
        let n: usize = $n;
        let lanes = <$s as $crate::jit::native::simd::Simd>::LANES;
        let whole = n - n % lanes;
        for $i in (0..whole).step_by(lanes) {
            let $len = lanes;
            $body
        }
        if whole < n {
            let ($i, $len) = (whole, n - whole);
            $body
        }
    }};
}
pub(super) use by_vectors;

/// AVX-512F's vectors.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Avx512;

/// The mask of the first `n < 16` lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn first(n: usize) -> u16 {
    (1u16 << n) - 1
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn splat(self, x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn zero(self) -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        // SAFETY: the caller's.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_part(self, p: *const f32, n: usize) -> __m512 {
        // SAFETY: the caller's; masked-off lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(first(n), p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        // SAFETY: the caller's.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_part(self, p: *mut f32, n: usize, v: __m512) {
        // SAFETY: the caller's; masked-off lanes are not written.
        unsafe { _mm512_mask_storeu_ps(p, first(n), v) }
    }
    #[inline(always)]
    unsafe fn add(self, a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(self, a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(self, a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(self, a: __m512, b: __m512) -> __m512 {
        _mm512_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sqrt(self, a: __m512) -> __m512 {
        _mm512_sqrt_ps(a)
    }
    /// `√x` from `rsqrt14`'s estimate `y` (relative error below 2⁻¹⁴): `g = x·y` and
    /// `h = y/2` approach `√x` and `1/(2√x)`, one Newton step takes both to about 2⁻²⁷,
    /// and the remainder `d = x − g²`, exact in a multiply-add, corrects `g` by `d·h`,
    /// rounded once. Checked against `vsqrtps` on all 2³² inputs
    /// (`simd::tests::sqrt_fma_is_vsqrtps_on_every_input`): the same bits for every
    /// `x ≥ 2⁻¹⁰²`; below it the remainder falls under the smallest normal and is no
    /// longer exact. So a vector with any lane under 2⁻⁵⁰ after the correction (zero,
    /// negatives, ∞ and NaN give NaN; `x < 2⁻¹⁰²` gives less than 2⁻⁵⁰) takes `vsqrtps`
    /// instead. Nine vector operations, but not the divider, which Adam's division also
    /// needs: see [`fma_sqrt`].
    #[inline(always)]
    unsafe fn sqrt_fma(self, x: __m512) -> __m512 {
        let half = _mm512_set1_ps(0.5);
        let y = _mm512_rsqrt14_ps(x);
        let (g, h) = (_mm512_mul_ps(x, y), _mm512_mul_ps(y, half));
        let r = _mm512_fnmadd_ps(g, h, half);
        let (g, h) = (_mm512_fmadd_ps(g, r, g), _mm512_fmadd_ps(h, r, h));
        let d = _mm512_fnmadd_ps(g, g, x);
        let root = _mm512_fmadd_ps(d, h, g);
        // 2⁻⁵⁰: the biased exponent 77.
        let least = _mm512_set1_ps(f32::from_bits(77 << 23));
        if _mm512_cmp_ps_mask::<_CMP_NGE_UQ>(root, least) != 0 {
            _mm512_sqrt_ps(x)
        } else {
            root
        }
    }
    #[inline(always)]
    unsafe fn min(self, a: __m512, b: __m512) -> __m512 {
        _mm512_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(self, a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn sum(self, a: __m512) -> f32 {
        _mm512_reduce_add_ps(a)
    }
    #[inline(always)]
    unsafe fn gather(self, p: *const f32, stride: usize) -> __m512 {
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let index = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(stride as i32));
        // SAFETY: the caller's.
        unsafe { _mm512_i32gather_ps::<4>(index, p) }
    }
}

/// AVX2's vectors, with FMA's multiply-add.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn splat(self, x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn zero(self) -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        // SAFETY: the caller's.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_part(self, p: *const f32, n: usize) -> __m256 {
        // SAFETY: the caller's: `n < 8` floats at `p`.
        unsafe {
            let (lo, hi) = if n >= 4 {
                (_mm_loadu_ps(p), load4(p.add(4), n - 4))
            } else {
                (load4(p, n), _mm_setzero_ps())
            };
            _mm256_set_m128(hi, lo)
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        // SAFETY: the caller's.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_part(self, p: *mut f32, n: usize, v: __m256) {
        // SAFETY: the caller's: `n < 8` floats at `p`.
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            if n >= 4 {
                _mm_storeu_ps(p, lo);
                store4(p.add(4), n - 4, _mm256_extractf128_ps::<1>(v));
            } else {
                store4(p, n, lo);
            }
        }
    }
    #[inline(always)]
    unsafe fn add(self, a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(self, a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(self, a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(self, a: __m256, b: __m256) -> __m256 {
        _mm256_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sqrt(self, a: __m256) -> __m256 {
        _mm256_sqrt_ps(a)
    }
    #[inline(always)]
    unsafe fn min(self, a: __m256, b: __m256) -> __m256 {
        _mm256_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(self, a: __m256, b: __m256) -> __m256 {
        _mm256_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn sum(self, a: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
    }
    #[inline(always)]
    unsafe fn gather(self, p: *const f32, stride: usize) -> __m256 {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let index = _mm256_mullo_epi32(lanes, _mm256_set1_epi32(stride as i32));
        // SAFETY: the caller's.
        unsafe { _mm256_i32gather_ps::<4>(p, index) }
    }
}

/// The first `n <= 4` floats from `p`, zeros in the other lanes, by at most two loads
/// (no call to `memcpy`, as a copy of a variable length would make).
///
/// # Safety
/// `n` floats at `p` are readable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load4(p: *const f32, n: usize) -> __m128 {
    // SAFETY: the caller's; each load reads only floats `..n`.
    unsafe {
        match n {
            0 => _mm_setzero_ps(),
            1 => _mm_load_ss(p),
            2 => _mm_castsi128_ps(_mm_loadl_epi64(p as *const __m128i)),
            3 => {
                let pair = _mm_castsi128_ps(_mm_loadl_epi64(p as *const __m128i));
                _mm_movelh_ps(pair, _mm_load_ss(p.add(2)))
            }
            _ => _mm_loadu_ps(p),
        }
    }
}

/// The first `n <= 4` lanes of `v` to `p`, by at most two stores.
///
/// # Safety
/// `n` floats at `p` are writable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store4(p: *mut f32, n: usize, v: __m128) {
    // SAFETY: the caller's; each store writes only floats `..n`.
    unsafe {
        match n {
            0 => {}
            1 => _mm_store_ss(p, v),
            2 => _mm_storel_epi64(p as *mut __m128i, _mm_castps_si128(v)),
            3 => {
                _mm_storel_epi64(p as *mut __m128i, _mm_castps_si128(v));
                _mm_store_ss(p.add(2), _mm_movehl_ps(v, v));
            }
            _ => _mm_storeu_ps(p, v),
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Loads and stores of every partial length, and a sum, through each set this CPU has.
    struct RoundTrip<'a> {
        src: &'a [f32],
        dst: &'a mut [f32],
    }

    impl VecKernel for RoundTrip<'_> {
        type Output = f32;
        unsafe fn run<S: Simd>(self, s: S) -> f32 {
            let n = self.src.len();
            let mut total = 0.0;
            for i in (0..n).step_by(S::LANES) {
                // SAFETY: lanes `i..min(i + LANES, n)` of both slices.
                unsafe {
                    let v = s.load_to(self.src.as_ptr(), i, n);
                    total += s.sum(v);
                    s.store_to(self.dst.as_mut_ptr(), i, n, s.add(v, v));
                }
            }
            total
        }
    }

    /// Counts the inputs among all 2³² bit patterns where `sqrt_fma` and `sqrt` give
    /// different bits.
    struct EveryInput;

    impl VecKernel for EveryInput {
        type Output = u64;
        #[inline(always)]
        unsafe fn run<S: Simd>(self, s: S) -> u64 {
            const CHUNK: usize = 1 << 12;
            let (mut x, mut fast, mut exact) = (vec![0.0f32; CHUNK], [0.0f32; 16], [0.0f32; 16]);
            let mut differing = 0;
            for first in (0..1u64 << 32).step_by(CHUNK) {
                for (i, x) in x.iter_mut().enumerate() {
                    *x = f32::from_bits((first + i as u64) as u32);
                }
                for i in (0..CHUNK).step_by(S::LANES) {
                    // SAFETY: `i + LANES <= CHUNK`, and `fast`, `exact` hold 16 ≥ LANES.
                    unsafe {
                        let v = s.load(x.as_ptr().add(i));
                        s.store(fast.as_mut_ptr(), s.sqrt_fma(v));
                        s.store(exact.as_mut_ptr(), s.sqrt(v));
                    }
                    let lanes = fast.iter().zip(&exact).take(S::LANES);
                    differing += lanes.filter(|(a, b)| a.to_bits() != b.to_bits()).count() as u64;
                }
            }
            differing
        }
    }

    /// `sqrt_fma`'s bits are `vsqrtps`'s for every input: zeros, subnormals, normals, ∞,
    /// negatives and NaNs. AVX-512 only: elsewhere `sqrt_fma` is `sqrt` itself.
    #[test]
    fn sqrt_fma_is_vsqrtps_on_every_input() {
        if Isa::detect() == Some(Isa::Avx512) {
            // SAFETY: the CPU has AVX-512F.
            assert_eq!(unsafe { Isa::Avx512.run(EveryInput) }, 0);
        }
    }

    #[test]
    fn partial_vectors_read_and_write_only_their_lanes() {
        for isa in Isa::available() {
            for n in 0..40 {
                let src: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
                // One more element than the kernel may touch: it must stay as it was.
                let mut dst = vec![-7.0f32; n + 1];
                // SAFETY: `isa` is one this CPU has.
                let total = unsafe {
                    isa.run(RoundTrip {
                        src: &src,
                        dst: &mut dst[..n],
                    })
                };
                let doubled: Vec<f32> = src.iter().map(|x| 2.0 * x).collect();
                assert_eq!(&dst[..n], &doubled[..], "{isa:?}, n = {n}");
                assert_eq!(dst[n], -7.0, "{isa:?} wrote past n = {n}");
                assert_eq!(total, (n * (n + 1) / 2) as f32, "{isa:?}, n = {n}");
            }
        }
    }
}
