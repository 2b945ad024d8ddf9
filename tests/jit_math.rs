//! The generated activations against f64 references, over a dense sweep and
//! the special values: at most 1e-6 absolute error, ±inf to the limits, NaN
//! to NaN. Each is compiled as a one-op function, so vector and scalar code
//! (31 elements: seven f32x4 chunks and a scalar tail of three) are both run;
//! and again with tanh and sigmoid on the host's vector code where the CPU has
//! AVX-512F or AVX2 (`wide_activations`), which must give the same bits.

use lstmc::ir::{Function, InputRole, Op, OutputRole};
use lstmc::jit;
use lstmc::model::Activation;

fn compile_act(a: Activation, n: usize, wide: bool) -> jit::Compiled {
    let mut f = Function::new("act");
    let x = f.add_input(InputRole::X, vec![1, n]);
    let entry = f.entry;
    let y = f.push(entry, Op::Act(a), &[x], None).unwrap().unwrap();
    f.outputs.push((OutputRole::Y, y));
    let mut options = jit::Options::default();
    options.tuning.wide_activations &= wide;
    jit::compile(f, &options).unwrap()
}

fn eval(c: &jit::Compiled, xs: &[f32]) -> Vec<f32> {
    let mut arena = vec![0.0f32; c.plan.arena_len];
    // The input as the runtime stages it: one padded row and slack.
    let mut input = xs.to_vec();
    input.resize(c.plan.input_lens[0], 0.0);
    c.code.call(&[&input], &mut arena).unwrap();
    let loc = c.plan.outputs[0];
    arena[loc.offset as usize..loc.offset as usize + xs.len()].to_vec()
}

fn reference(a: Activation, x: f64) -> f64 {
    lstmc::interp::activate(a, x)
}

#[test]
fn activations_are_within_1e6_everywhere_and_right_at_special_values() {
    const N: usize = 31;
    for a in [
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::HardSigmoid,
        Activation::Relu,
    ] {
        let c = compile_act(a, N, false);
        let wide = compile_act(a, N, true);
        let same = |x: &[f32], y: &[f32]| {
            let y_wide = eval(&wide, x);
            for ((x, y), w) in x.iter().zip(y).zip(&y_wide) {
                assert_eq!(
                    y.to_bits(),
                    w.to_bits(),
                    "{a:?}({x}): {y} generated, {w} on the host"
                );
            }
        };
        // Every output lies in the function's range: a sigmoid of -16 that came out as
        // -1e-9 would pass the error bound and then be a negative probability.
        let (lo, hi) = match a {
            Activation::Tanh => (-1.0, 1.0),
            Activation::Sigmoid | Activation::HardSigmoid => (0.0, 1.0),
            _ => (0.0, f32::INFINITY),
        };
        // A dense sweep of [-20, 20] (and beyond the clamps), in chunks of N.
        let mut worst = 0.0f64;
        let xs: Vec<f32> = (-400_000..=400_000).map(|i| i as f32 * 5e-5).collect();
        for chunk in xs.chunks(N) {
            let mut v = chunk.to_vec();
            v.resize(N, 0.0);
            let y = eval(&c, &v);
            same(&v, &y);
            for (&x, &y) in v.iter().zip(&y) {
                let err = (y as f64 - reference(a, x as f64)).abs();
                worst = worst.max(err);
                assert!(
                    (lo..=hi).contains(&y),
                    "{a:?}({x}) = {y}, outside [{lo}, {hi}]"
                );
            }
        }
        assert!(worst <= 1e-6, "{a:?}: worst error {worst}");
        let mut special = vec![
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
            -0.0,
            1e30,
            -1e30,
            f32::MIN_POSITIVE,
        ];
        special.resize(N, 0.0);
        let y = eval(&c, &special);
        same(&special, &y);
        let want = |x: f32| -> f32 {
            match a {
                Activation::Tanh => (x as f64).tanh() as f32,
                _ => reference(a, x as f64) as f32,
            }
        };
        for (&x, &y) in special.iter().zip(&y) {
            let w = want(x);
            if w.is_nan() {
                assert!(y.is_nan(), "{a:?}({x}) = {y}, want NaN");
            } else {
                assert!(
                    y == w || (y - w).abs() <= 1e-6,
                    "{a:?}({x}) = {y}, want {w}"
                );
            }
        }
        println!("{a:?}: worst error {worst:.3e}");
    }
}
