//! The passes keep meaning: the interpreter gives the same numbers for the
//! lowered function and after every prefix of the pipeline, on every Keras
//! fixture and on random models. Golden files show each pass's effect.

mod common;

use common::random::random_model;
use common::*;
use lstmc::interp;
use lstmc::ir::{lower, verify::verify, Function, InputRole, OutputRole};
use lstmc::passes::{self, Options};
use ndarray::ArrayD;
use proptest::prelude::*;
use std::path::PathBuf;

/// Runs `f` with `x`, the weights, and zero or given states; returns every output by role.
fn run(
    f: &Function,
    x: &ArrayD<f64>,
    w: &lstmc::weights::Weights,
    states: &[ArrayD<f64>],
) -> Vec<(OutputRole, ArrayD<f64>)> {
    let mut s = states.iter();
    let inputs: Vec<ArrayD<f64>> = f
        .input_roles
        .iter()
        .map(|r| match r {
            InputRole::X => x.clone(),
            InputRole::Weight { layer, name } => w.get(*layer, name).unwrap().clone(),
            InputRole::State { .. } => s.next().unwrap().clone(),
            r => unreachable!("forward functions take no {r}"),
        })
        .collect();
    let outs = interp::run(f, &inputs).unwrap();
    f.outputs.iter().map(|(r, _)| r.clone()).zip(outs).collect()
}

fn states_for(f: &Function, fill: f64) -> Vec<ArrayD<f64>> {
    f.input_roles
        .iter()
        .zip(&f.block(f.entry).params)
        .filter(|(r, _)| matches!(r, InputRole::State { .. }))
        .map(|(_, &p)| ArrayD::from_elem(f.shape(p), fill))
        .collect()
}

fn check_all_prefixes(
    spec: &lstmc::model::ModelSpec,
    w: &lstmc::weights::Weights,
    x: &ArrayD<f64>,
    opts: &Options,
    what: &str,
) {
    let shapes = lstmc::reference::batch_shapes(spec, x.shape()).unwrap();
    let base = lower::lower(spec, shapes).unwrap();
    // Non-zero initial states, so that folding must not fire on stateful layers.
    let states = states_for(&base, 0.25);
    let want = run(&base, x, w, &states);
    for pass in passes::names() {
        let mut f = base.clone();
        passes::optimize(&mut f, opts, Some(pass)).unwrap_or_else(|e| panic!("{what}: {e}"));
        verify(&f).unwrap();
        let got = run(&f, x, w, &states);
        assert_eq!(got.len(), want.len());
        for ((r1, a), (r2, b)) in got.iter().zip(&want) {
            assert_eq!(r1, r2);
            assert_close(&format!("{what}, after {pass}, output {r1}"), a, b, 1e-12);
        }
    }
}

#[test]
fn every_fixture_interprets_identically_after_every_pass() {
    for name in fixture_names() {
        let fx = load(&name);
        let spec = fx.spec();
        let w = fx.weights(&spec);
        let x = array(&fx.batches()[0]["x"]);
        check_all_prefixes(&spec, &w, &x, &Options::default(), &name);
        // Force the other unrolling strategies too.
        let none = Options {
            full_unroll_max: 0,
            partial_unroll_max: 1,
        };
        check_all_prefixes(&spec, &w, &x, &none, &format!("{name} (no unrolling)"));
        let partial = Options {
            full_unroll_max: 1,
            partial_unroll_max: 3,
        };
        check_all_prefixes(
            &spec,
            &w,
            &x,
            &partial,
            &format!("{name} (partial unrolling)"),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    #[test]
    fn random_models_interpret_identically_after_every_pass(m in random_model(), full in 0..20usize, part in 1..6usize) {
        let spec = m.spec();
        let w = m.weights(&spec);
        let x = m.inputs(&spec, 1).remove(0);
        let opts = Options { full_unroll_max: full, partial_unroll_max: part };
        check_all_prefixes(&spec, &w, &x, &opts, &m.text);
    }
}

/// Golden IR after a pass: `tests/golden/passes/MODEL.after-PASS.ir`, read and checked by hand.
#[test]
fn each_pass_matches_its_golden_file() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/passes");
    let cases = [
        ("seed_lstm", "fuse-gates"),
        ("seed_lstm", "hoist"),
        ("seed_lstm", "unroll"),
        ("seed_lstm", "fold"),
        ("seed_lstm", "dce"),
        ("seed_lstm", "fuse-elementwise"),
        ("gru_reset_before", "fuse-gates"),
        ("gru_reset_before", "fuse-elementwise"),
        ("lstm_stateful", "fold"),
        ("lstm_long", "unroll"),
        ("lstm_long", "fuse-elementwise"),
    ];
    let bless = std::env::var_os("LSTMC_BLESS").is_some();
    let mut failures = Vec::new();
    for (model, pass) in cases {
        let path = dir.join(format!("{model}.model"));
        let spec =
            lstmc::front::load(&format!("{model}.model"), &std::fs::read(&path).unwrap()).unwrap();
        let shapes = lower::Shapes {
            batch: spec.input.batch.unwrap_or(1),
            time: spec.input.time.unwrap(),
        };
        let mut f = lower::lower(&spec, shapes).unwrap();
        passes::optimize(&mut f, &Options::default(), Some(pass)).unwrap();
        let got = lstmc::ir::print::print(&f, None);
        let golden = dir.join(format!("{model}.after-{pass}.ir"));
        if bless {
            std::fs::write(&golden, &got).unwrap();
        } else if std::fs::read_to_string(&golden).unwrap_or_default() != got {
            failures.push(golden.display().to_string());
        }
    }
    assert!(failures.is_empty(), "IR differs from: {failures:?}");
}
