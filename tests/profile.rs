//! `lstmc bench --profile`: profiled code counts the time of each instruction of its IR,
//! and computes the same bits as the code without the counting.

use lstmc::runtime::CompiledModel;
use lstmc::weights::Weights;
use ndarray::{ArrayD, IxDyn};

#[test]
fn a_profiled_function_counts_its_instructions_and_computes_the_same_bits() {
    let spec = lstmc::front::load(
        "p.model",
        b"LSTM 24 input_dim=3 input_length=5 return_sequences\nLSTM 8\nDense 4 activation=softmax\n",
    )
    .unwrap();
    let w = Weights::init(&spec, 3);
    let x = ArrayD::from_shape_fn(IxDyn(&[2, 5, 3]), |i| {
        (i[0] + 2 * i[1] + i[2]) as f32 * 0.1 - 0.5
    });
    let profiled = lstmc::jit::Options {
        profile: true,
        ..Default::default()
    };
    let mut plain = CompiledModel::new(spec.clone(), &w, lstmc::jit::Options::default());
    let mut counted = CompiledModel::new(spec.clone(), &w, profiled);
    let calls = 200;
    let start = std::time::Instant::now();
    for _ in 0..calls {
        let (a, b) = (
            plain.predict(&x, 2).unwrap(),
            counted.predict(&x, 2).unwrap(),
        );
        let same = a
            .iter()
            .zip(b.iter())
            .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "profiled code computed other bits: {a:?} vs {b:?}");
    }
    let wall_ns = start.elapsed().as_nanos() as f64 / calls as f64;
    let shapes = lstmc::reference::batch_shapes(&spec, &[2, 5, 3]).unwrap();
    let c = counted.compiled(shapes).unwrap();
    let profile = c.profile.as_ref().expect("compiled with a profile");
    let lines = profile.report(&c.func);
    // Every instruction that does work is counted once per call (the loop bodies' once
    // per step), and nothing else: the products, kernels and softmax are all there.
    for op in ["matmul", "fused", "softmax"] {
        assert!(
            lines.iter().any(|l| l.inst.contains(&format!("= {op}"))),
            "no `{op}` counted in {lines:#?}"
        );
    }
    for l in &lines {
        assert!(
            l.passes_per_call >= 1.0 && l.passes_per_call.fract() == 0.0,
            "{l:?}: a whole number of passes per call"
        );
    }
    let counted_ns: f64 = lines.iter().map(|l| l.ns_per_call).sum();
    assert!(
        counted_ns > 0.0 && counted_ns < wall_ns,
        "{counted_ns} ns counted per call, {wall_ns} ns per call of both functions"
    );
    assert!(
        lstmc::runtime::CompiledModel::new(spec.clone(), &w, lstmc::jit::Options::default())
            .compiled(lstmc::reference::batch_shapes(&spec, &[2, 5, 3]).unwrap())
            .unwrap()
            .profile
            .is_none()
    );
}
