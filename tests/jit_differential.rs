//! Differential tests: the JIT against the f64 interpreter on random models
//! (one to three layers of any kind and option, units 1–70, input_dim 1–20,
//! input_length 1–40, batch 1–9), over 3 consecutive calls so that stateful
//! layers carry their states. 300 cases per run.
//!
//! Some random models are chaotic (a linear GRU whose `1 - z` reaches 2
//! amplifies any rounding exponentially): there f32 and f64 must disagree,
//! and so would two f64 runs with inputs 1e-6 apart. Such cases are detected
//! exactly that way, on the interpreter alone, and skipped.

mod common;

use common::random::{random_model, RandomModel};
use lstmc::reference::Reference;
use lstmc::runtime::CompiledModel;
use proptest::prelude::*;

/// f32 against f64: relative to the output's scale (relu and linear stacks can grow large).
fn agree(
    what: &str,
    got: &ndarray::ArrayD<f32>,
    want: &ndarray::ArrayD<f64>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.shape(), want.shape());
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
        let g = g as f64;
        if !w.is_finite() || w.abs() > 1e30 {
            // Overflowed in f64: f32 overflows sooner; nothing to compare.
            continue;
        }
        prop_assert!(
            (g - w).abs() <= 2e-4 * scale,
            "{}: element {}: jit {}, interpreter {}",
            what,
            i,
            g,
            w
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn jit_agrees_with_the_interpreter(m in random_model(), split in any::<bool>()) {
        let spec = m.spec();
        let w = m.weights(&spec);
        let xs = m.inputs(&spec, 3);
        // Conditioning: the interpreter against itself with inputs moved by 1e-6, on
        // everything compared below (every layer's states too: a saturated last layer
        // can hide an earlier one that amplifies rounding).
        let mut a = Reference::new(spec.clone(), w.clone());
        let mut b = Reference::new(spec.clone(), w.clone());
        for x in &xs {
            let oa = a.predict_batch(x).unwrap();
            let ob = b.predict_batch(&x.mapv(|v| v * (1.0 + 1e-6))).unwrap();
            let pairs = std::iter::once((&oa.y, &ob.y))
                .chain(oa.states.iter().zip(&ob.states).map(|((_, _, p), (_, _, q))| (p, q)));
            for (pa, pb) in pairs {
                let scale = pa.iter().filter(|v| v.is_finite()).fold(1.0f64, |m, v| m.max(v.abs()));
                let moved = pa.iter().zip(pb.iter()).map(|(p, q)| (p - q).abs()).fold(0.0f64, |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) });
                prop_assume!(moved <= 2e-5 * scale, "ill-conditioned model");
            }
        }
        let mut reference = Reference::new(spec.clone(), w.clone());
        // Half the cases as compiled by default; the other half with every product on the
        // host GEMM and every fused kernel split between two threads.
        let options = if split { common::split_options() } else { lstmc::jit::Options::default() };
        let mut jit = CompiledModel::new(spec.clone(), &w, options);
        for (call, x) in xs.into_iter().enumerate() {
            let want = reference.predict_batch(&x).unwrap();
            let got = jit.predict_batch(&x.mapv(|v| v as f32)).unwrap();
            agree(&format!("{} call {call} y", m.text), &got.y, &want.y)?;
            for ((l, s, g), (_, _, w)) in got.states.iter().zip(&want.states) {
                agree(&format!("{} call {call} layer {l} {s}", m.text), g, w)?;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(60))]

    /// At batch 1, a forward function whose products and kernels are split between two
    /// threads sums every element in the order one thread does (its few-row products are
    /// split by columns): the same bits as the same function on one thread, call after
    /// call (states carried).
    #[test]
    fn a_split_forward_at_batch_one_has_the_bits_of_one_thread(m in random_model()) {
        split_has_the_bits_of_one_thread(m)?;
    }
}

/// [`a_split_forward_at_batch_one_has_the_bits_of_one_thread`] for `m` at batch 1.
fn split_has_the_bits_of_one_thread(mut m: RandomModel) -> Result<(), TestCaseError> {
    // Every draw at batch 1 (a stateful one fixes it in its first line).
    m.text = m
        .text
        .replace(&format!("batch_size={}", m.batch), "batch_size=1");
    m.batch = 1;
    let spec = m.spec();
    let w = m.weights(&spec);
    let two = common::split_options();
    let mut one = two;
    one.tuning.threads = 1;
    let (mut one, mut two) = (
        CompiledModel::new(spec.clone(), &w, one),
        CompiledModel::new(spec.clone(), &w, two),
    );
    for (call, x) in m.inputs(&spec, 3).into_iter().enumerate() {
        let x = x.mapv(|v| v as f32);
        let (a, b) = (
            one.predict_batch(&x).unwrap(),
            two.predict_batch(&x).unwrap(),
        );
        let bits = |y: &ndarray::ArrayD<f32>| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&a.y), bits(&b.y), "{} call {}", m.text, call);
        for ((l, s, p), (_, _, q)) in a.states.iter().zip(&b.states) {
            prop_assert_eq!(
                bits(p),
                bits(q),
                "{} call {} layer {} {}",
                m.text,
                call,
                l,
                s
            );
        }
    }
    Ok(())
}

/// Products that two threads split with one row or one column left over: 9 steps of 8
/// gates (8 + 1 rows), 17 steps (16 + 1), 33 gates (32 + 1 columns). Where the GEMM
/// multiplies a lone row or column with its matrix–vector kernel, it sums in another
/// order (seen on AArch64), so the split never leaves one.
#[test]
fn splits_leave_no_lone_row_or_column() {
    for text in [
        "LSTM 2 input_dim=5 input_length=9\n",
        "LSTM 3 input_dim=2 input_length=17 return_sequences\n",
        "GRU 11 input_dim=3 input_length=4\n",
    ] {
        let m = RandomModel {
            text: text.into(),
            batch: 1,
            seed: 7,
        };
        split_has_the_bits_of_one_thread(m).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(60))]

    /// The host's vector activations (`wide_activations`, where the CPU has AVX-512F, or
    /// AVX2 and FMA)
    /// run the operations of the generated 128-bit ones in the same order: the same bits,
    /// call after call (states carried), on one thread and split between two.
    #[test]
    fn host_activations_have_the_bits_of_generated_ones(m in random_model(), split in any::<bool>()) {
        let wide = if split { common::split_options() } else { lstmc::jit::Options::default() };
        if !wide.tuning.wide_activations {
            return Ok(()); // a CPU without either has only the generated ones
        }
        let mut narrow = wide;
        narrow.tuning.wide_activations = false;
        let spec = m.spec();
        let w = m.weights(&spec);
        let (mut a, mut b) = (CompiledModel::new(spec.clone(), &w, wide), CompiledModel::new(spec.clone(), &w, narrow));
        for (call, x) in m.inputs(&spec, 3).into_iter().enumerate() {
            let x = x.mapv(|v| v as f32);
            let (p, q) = (a.predict_batch(&x).unwrap(), b.predict_batch(&x).unwrap());
            let bits = |y: &ndarray::ArrayD<f32>| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&p.y), bits(&q.y), "{} call {}", m.text, call);
            for ((l, s, g), (_, _, h)) in p.states.iter().zip(&q.states) {
                prop_assert_eq!(bits(g), bits(h), "{} call {} layer {} {}", m.text, call, l, s);
            }
        }
    }
}

/// The model compiled for one thread and for two.
fn at_one_and_two_threads(
    spec: &lstmc::model::ModelSpec,
    w: &lstmc::weights::Weights,
) -> (CompiledModel, CompiledModel) {
    at_one_and_two_threads_with(spec, w, lstmc::jit::Options::default())
}

/// [`at_one_and_two_threads`] from options `one`.
fn at_one_and_two_threads_with(
    spec: &lstmc::model::ModelSpec,
    w: &lstmc::weights::Weights,
    one: lstmc::jit::Options,
) -> (CompiledModel, CompiledModel) {
    let mut two = one;
    two.tuning.threads = 2;
    (
        CompiledModel::new(spec.clone(), w, one),
        CompiledModel::new(spec.clone(), w, two),
    )
}

/// A large batch at two threads runs as two blocks of rows, each whole on its own thread
/// (a function compiled for one thread and half the batch, no hand-off between steps):
/// the bits of the whole batch on one thread, call after call (states carried), through
/// the batch path and the allocation-free one, and the interpreter's numbers.
#[test]
fn a_large_batch_split_in_blocks_of_rows_has_the_bits_of_one_thread() {
    for (text, batch) in [
        (
            "LSTM 64 input_dim=24 input_length=40 batch_size=16 stateful\n",
            16,
        ),
        (
            "GRU 48 input_dim=16 input_length=30 return_sequences\nLSTM 32\nDense 5\n",
            32,
        ),
    ] {
        let m = RandomModel {
            text: text.into(),
            batch,
            seed: 7,
        };
        let spec = m.spec();
        let w = m.weights(&spec);
        let (mut a, mut b) = at_one_and_two_threads(&spec, &w);
        let xs = m.inputs(&spec, 3);
        let shape = xs[0].shape().to_vec();
        let shapes = lstmc::reference::batch_shapes(&spec, &shape).unwrap();
        assert_eq!((a.parts(shapes), b.parts(shapes)), (1, 2), "{text}");
        let bits = |y: &ndarray::ArrayD<f32>| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let mut reference = Reference::new(spec.clone(), w.clone());
        for (call, x) in xs.iter().enumerate() {
            let xf = x.mapv(|v| v as f32);
            let (p, q) = (a.predict_batch(&xf).unwrap(), b.predict_batch(&xf).unwrap());
            assert_eq!(bits(&p.y), bits(&q.y), "{text} call {call}");
            assert_eq!(p.states.len(), q.states.len());
            for ((l, s, g), (_, _, h)) in p.states.iter().zip(&q.states) {
                assert_eq!(bits(g), bits(h), "{text} call {call} layer {l} {s}");
            }
            let want = reference.predict_batch(x).unwrap();
            agree(&format!("{text} call {call}"), &q.y, &want.y).unwrap();
        }
        let xf: Vec<f32> = xs[0].iter().map(|&v| v as f32).collect();
        let n = a.predict_batch(&xs[0].mapv(|v| v as f32)).unwrap().y.len();
        let (mut ya, mut yb) = (vec![0.0f32; n], vec![0.0f32; n]);
        a.predict_into(&xf, &shape, &mut ya).unwrap();
        b.predict_batch(&xs[0].mapv(|v| v as f32)).unwrap();
        b.predict_into(&xf, &shape, &mut yb).unwrap();
        let raw = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(raw(&ya), raw(&yb), "{text}: predict_into");
    }
}

/// A wide recurrent kernel (513 units: 513 × 2052) with enough rows, packed (`pack`:
/// blocks of 4 rows and a rest of 2, split 20 + 14 at two threads), or where packing is
/// off read through a transpose, its step products written column by column and
/// transposed into place (`passes::transpose::reads_weight_transposed`), by tiles of a
/// vector's columns and a rest (4 columns with 16 lanes, 1 with 8). The input projection
/// of 256 features reads its kernel packed too, where packing is on. The interpreter's
/// numbers, call after call (states carried), and the same bits at one thread (34 rows)
/// and at two.
#[test]
fn a_wide_recurrent_kernel_packed_or_read_transposed_gives_the_interpreters_numbers() {
    let m = RandomModel {
        text: "LSTM 513 input_dim=256 input_length=3 batch_size=34 stateful\n".into(),
        batch: 34,
        seed: 5,
    };
    let spec = m.spec();
    let w = m.weights(&spec);
    for packed in [true, false] {
        let mut options = lstmc::jit::Options::default();
        options.tuning.packed_weights = packed;
        wide_kernel_follows_the_interpreter(&m, &spec, &w, options);
    }
}

/// The checks of [`a_wide_recurrent_kernel_packed_or_read_transposed_gives_the_interpreters_numbers`].
fn wide_kernel_follows_the_interpreter(
    m: &RandomModel,
    spec: &lstmc::model::ModelSpec,
    w: &lstmc::weights::Weights,
    options: lstmc::jit::Options,
) {
    let (mut a, mut b) = at_one_and_two_threads_with(spec, w, options);
    let bits = |y: &ndarray::ArrayD<f32>| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let mut reference = Reference::new(spec.clone(), w.clone());
    let packed = options.tuning.packed_weights;
    for (call, x) in m.inputs(spec, 3).iter().enumerate() {
        let xf = x.mapv(|v| v as f32);
        let (p, q) = (a.predict_batch(&xf).unwrap(), b.predict_batch(&xf).unwrap());
        assert_eq!(bits(&p.y), bits(&q.y), "packed {packed}, call {call}");
        // Closer than `agree`: three steps of a stable layer, where f32 stays within
        // about 1e-6 of f64 (a 0.1% error in the last 4 columns of the product is caught).
        let want = reference.predict_batch(x).unwrap();
        assert_eq!(p.y.shape(), want.y.shape());
        for (i, (&g, &w)) in p.y.iter().zip(want.y.iter()).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5,
                "packed {packed}, call {call}, element {i}: {g} against {w}"
            );
        }
    }
}
