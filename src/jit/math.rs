//! Activations as inline Cranelift code, for `f32` and `f32x4` alike.
//!
//! Cranelift has no transcendental instructions, and a call per element
//! costs more than the arithmetic (DESIGN.md measured inline code 2–5×
//! faster), so `tanh` is a rational approximation evaluated inline: Eigen's
//! `ptanh_float` coefficients, odd degree 13 over even degree 6 on x
//! clamped to ±7.9053, where tanh is 1 in f32, by Estrin's scheme. Its error
//! is below 1e-6 everywhere (the tests sweep it). `sigmoid(x) = 0.5 + 0.5·tanh(x/2)`,
//! with the halvings folded into the same rational's coefficients.
//! Clamps are `select(fcmp)`, which keeps NaN (a comparison with NaN is
//! false, so NaN passes through), and maps ±inf to ±1 (tanh) or 0/1
//! (sigmoid).

use crate::model::Activation;
use cranelift_codegen::ir::{condcodes::FloatCC, types, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;

const TANH_CLAMP: f32 = 7.905_311;
const ALPHA: [f32; 7] = [
    4.893_524_6e-3,
    6.372_619_3e-4,
    1.485_722_4e-5,
    5.122_297e-8,
    -8.604_672e-11,
    2.000_188e-13,
    -2.760_768_5e-16,
];
const BETA: [f32; 4] = [4.893_525e-3, 2.268_434_7e-3, 1.185_347_1e-4, 1.198_258_4e-6];

/// A constant of type `ty` (`f32`, or `f32x4` splatted).
pub fn cst(b: &mut FunctionBuilder, ty: Type, v: f32) -> Value {
    let s = b.ins().f32const(v);
    if ty == types::F32 {
        s
    } else {
        b.ins().splat(ty, s)
    }
}

/// `cond ? a : b` for a comparison result of `ty`'s lanes.
fn pick(b: &mut FunctionBuilder, ty: Type, cond: Value, a: Value, other: Value) -> Value {
    if ty == types::F32 {
        b.ins().select(cond, a, other)
    } else {
        let mask = b.ins().bitcast(
            types::F32X4,
            cranelift_codegen::ir::MemFlagsData::new(),
            cond,
        );
        b.ins().bitselect(mask, a, other)
    }
}

/// `min(max(x, lo), hi)`, keeping NaN.
pub fn clamp(b: &mut FunctionBuilder, ty: Type, x: Value, lo: f32, hi: f32) -> Value {
    let hi_v = cst(b, ty, hi);
    let lo_v = cst(b, ty, lo);
    // `hi < x ? hi : x` and `x < lo ? lo : x`, the forms that lower to one `minps` and
    // one `maxps` (each returns its second operand, x, when x is NaN).
    let above = b.ins().fcmp(FloatCC::LessThan, hi_v, x);
    let x = pick(b, ty, above, hi_v, x);
    let below = b.ins().fcmp(FloatCC::LessThan, x, lo_v);
    pick(b, ty, below, lo_v, x)
}

/// `tanh(x)`.
pub fn tanh(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    let r = tanh_rational();
    let x = clamp(b, ty, x, -r.clamp, r.clamp);
    let (p, q) = rational(b, ty, x, &r);
    let p = b.ins().fmul(x, p);
    b.ins().fdiv(p, q)
}

/// `sigmoid(x) = 1/2 + tanh(x/2)/2 = (Q(x²/4)/2 + x·P(x²/4)/4) / Q(x²/4)`: the halvings
/// go into the coefficients (exactly: they are powers of two), and the sum into the
/// numerator's last multiply-add, so that the chain is no longer than tanh's.
pub fn sigmoid(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    let r = sigmoid_rational();
    let x = clamp(b, ty, x, -r.clamp, r.clamp);
    let (p, q) = rational(b, ty, x, &r);
    let num = b.ins().fma(x, p, q);
    let den = b.ins().fadd(q, q);
    b.ins().fdiv(num, den)
}

/// The coefficients of `(pk·P(k·y), qk·Q(k·y))` ([`rational`]): exact, since `k`, `pk`
/// and `qk` are powers of two.
fn coefficients(k: f32, pk: f32, qk: f32) -> ([f32; 7], [f32; 4]) {
    (
        std::array::from_fn(|i| ALPHA[i] * pk * k.powi(i as i32)),
        std::array::from_fn(|i| BETA[i] * qk * k.powi(i as i32)),
    )
}

/// What the host's vector activations (`lstmc_activate`)
/// need to compute [`tanh`] and [`sigmoid`] with the same operations in the same order:
/// the clamp, and the coefficients of the two polynomials of the rational.
#[derive(Clone, Copy, Debug)]
pub struct Rational {
    pub clamp: f32,
    pub alpha: [f32; 7],
    pub beta: [f32; 4],
}

/// [`Rational`] for [`tanh`].
pub fn tanh_rational() -> Rational {
    let (alpha, beta) = coefficients(1.0, 1.0, 1.0);
    Rational {
        clamp: TANH_CLAMP,
        alpha,
        beta,
    }
}

/// [`Rational`] for [`sigmoid`].
pub fn sigmoid_rational() -> Rational {
    let (alpha, beta) = coefficients(0.25, 0.25, 0.5);
    Rational {
        clamp: 2.0 * TANH_CLAMP,
        alpha,
        beta,
    }
}

/// `(pk·P(k·x²), qk·Q(k·x²))`, tanh's numerator (without its factor x) and denominator
/// at `x·√k`, scaled by `pk` and `qk` (see [`coefficients`]).
fn rational(b: &mut FunctionBuilder, ty: Type, x: Value, r: &Rational) -> (Value, Value) {
    let (alpha, beta) = (r.alpha, r.beta);
    // P(y) and Q(y) with y = x², by Estrin's scheme: pairs of terms in parallel,
    // joined by y² and y⁴. Three levels of fused multiply-adds instead of Horner's chain
    // of six: an LSTM step waits on two tanh levels in a row, and at batch 1 that chain
    // is the step's latency (W1 forward 0.224 -> 0.209-0.216 µs; worst error over the
    // test's sweep 2.80e-7 -> 2.84e-7).
    let y = b.ins().fmul(x, x);
    let y2 = b.ins().fmul(y, y);
    let y4 = b.ins().fmul(y2, y2);
    let pair = |b: &mut FunctionBuilder, hi: f32, lo: f32| {
        let (hi, lo) = (cst(b, ty, hi), cst(b, ty, lo));
        b.ins().fma(hi, y, lo)
    };
    let p01 = pair(b, alpha[1], alpha[0]);
    let p23 = pair(b, alpha[3], alpha[2]);
    let p45 = pair(b, alpha[5], alpha[4]);
    let q01 = pair(b, beta[1], beta[0]);
    let q23 = pair(b, beta[3], beta[2]);
    let a6 = cst(b, ty, alpha[6]);
    let p03 = b.ins().fma(p23, y2, p01);
    let p46 = b.ins().fma(a6, y2, p45);
    let p = b.ins().fma(p46, y4, p03);
    let q = b.ins().fma(q23, y2, q01);
    (p, q)
}

/// `dy · act'(x)`, given `y = act(x)`.
pub fn activation_grad(
    b: &mut FunctionBuilder,
    ty: Type,
    a: Activation,
    x: Value,
    y: Value,
    dy: Value,
) -> Value {
    let slope = match a {
        Activation::Linear | Activation::Softmax => return dy,
        Activation::Tanh => {
            let one = cst(b, ty, 1.0);
            let yy = b.ins().fmul(y, y);
            b.ins().fsub(one, yy)
        }
        Activation::Sigmoid => {
            let one = cst(b, ty, 1.0);
            let om = b.ins().fsub(one, y);
            b.ins().fmul(y, om)
        }
        Activation::Relu => {
            let zero = cst(b, ty, 0.0);
            let one = cst(b, ty, 1.0);
            let pos = b.ins().fcmp(FloatCC::GreaterThan, x, zero);
            pick(b, ty, pos, one, zero)
        }
        Activation::HardSigmoid => {
            let lo = cst(b, ty, -3.0);
            let hi = cst(b, ty, 3.0);
            let sixth = cst(b, ty, 1.0 / 6.0);
            let zero = cst(b, ty, 0.0);
            let above = b.ins().fcmp(FloatCC::GreaterThan, x, lo);
            let inner = pick(b, ty, above, sixth, zero);
            let below = b.ins().fcmp(FloatCC::LessThan, x, hi);
            pick(b, ty, below, inner, zero)
        }
    };
    b.ins().fmul(dy, slope)
}

/// An activation of `x`.
pub fn activation(b: &mut FunctionBuilder, ty: Type, a: Activation, x: Value) -> Value {
    match a {
        Activation::Linear | Activation::Softmax => x,
        Activation::Tanh => tanh(b, ty, x),
        Activation::Sigmoid => sigmoid(b, ty, x),
        Activation::HardSigmoid => {
            // Keras 3: relu6(x + 3) / 6, i.e. clamp(x/6 + 1/2, 0, 1).
            let sixth = cst(b, ty, 1.0 / 6.0);
            let half = cst(b, ty, 0.5);
            let y = b.ins().fma(x, sixth, half);
            clamp(b, ty, y, 0.0, 1.0)
        }
        Activation::Relu => {
            let zero = cst(b, ty, 0.0);
            let neg = b.ins().fcmp(FloatCC::LessThan, x, zero);
            pick(b, ty, neg, zero, x)
        }
    }
}
