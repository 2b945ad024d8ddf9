//! `lstmc bench`: the benchmark contract's workloads (shared bench/README.md),
//! timed by its rules, printed as one JSON line per measurement in the peer
//! script's fields, so that lstmc's lines sit beside the peers' in one file.

use lstmc::runtime::CompiledModel;
use lstmc::weights::Weights;
use lstmc::Error;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// One workload of the contract.
#[derive(Clone, Copy)]
struct Workload {
    id: &'static str,
    model: &'static str,
    /// (batch, seq, input_dim)
    input: [usize; 3],
    units: usize,
    gates: usize,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        id: "W1",
        model: "model seed_tiny\nLSTM 3 input_dim=1 input_length=4\n",
        input: [1, 4, 1],
        units: 3,
        gates: 4,
    },
    Workload {
        id: "W2",
        model: "model tutorial\nLSTM 128 input_dim=1 input_length=4 batch_size=1 stateful\nDense 12 activation=softmax\n",
        input: [1, 4, 1],
        units: 128,
        gates: 4,
    },
    Workload {
        id: "W3",
        model: "model medium\nLSTM 256 input_dim=64 input_length=50\n",
        input: [32, 50, 64],
        units: 256,
        gates: 4,
    },
    Workload {
        id: "W4",
        model: "model large\nLSTM 512 input_dim=512 input_length=100\n",
        input: [64, 100, 512],
        units: 512,
        gates: 4,
    },
    Workload {
        id: "W5",
        model: "model gru\nGRU 256 input_dim=64 input_length=50\n",
        input: [32, 50, 64],
        units: 256,
        gates: 3,
    },
];

/// The phases of the benchmark contract.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// One inference call.
    Forward,
    /// One training step (W2: an epoch of 50 steps).
    Train,
    /// Both.
    All,
}

/// Flags of `lstmc bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Time this .model file instead of a workload (with --input).
    #[arg(long, requires = "input")]
    pub model: Option<std::path::PathBuf>,
    /// The input shape for --model: BATCH,STEPS,FEATURES (or BATCH,FEATURES).
    #[arg(long, value_delimiter = ',')]
    pub input: Option<Vec<usize>>,
    /// W1..W5, a comma list, or `all`.
    #[arg(default_value = "all")]
    pub workload: String,
    /// Threads for large matrix products.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds of timed repetitions per measurement.
    #[arg(long, default_value_t = 2.0)]
    pub budget: f64,
    /// Which phases: forward, train (and W2's epoch), or all.
    #[arg(long, value_enum, default_value_t = Phase::All)]
    pub phase: Phase,
    /// Override the full-unrolling threshold (steps), for measuring it.
    #[arg(long)]
    pub full_unroll_max: Option<usize>,
    /// Override the partial-unrolling factor, for measuring it.
    #[arg(long)]
    pub partial_unroll_max: Option<usize>,
    /// Override the host-GEMM crossover (multiply-adds), for measuring it.
    #[arg(long)]
    pub gemm_crossover: Option<usize>,
    /// Override the size (multiply-adds) from which host GEMMs use every thread.
    #[arg(long)]
    pub parallel_min: Option<usize>,
    /// Multiply loops' products by packed weights (`on`) or not (`off`), overriding this
    /// CPU's default (on where it has AVX2 and FMA but not AVX-512F), for measuring it.
    #[arg(long, value_enum)]
    pub packed: Option<Switch>,
    /// Where batch-1 products and updates run with --threads above 1: `measured` (the
    /// default: each compiled function times its calls split and unsplit now and then and
    /// takes the faster way), or `near` or `far` taken as given (split always, or never),
    /// for measuring.
    #[arg(long, value_enum, default_value_t = PlacementArg::Measured)]
    pub placement: PlacementArg,
    /// Also count the time of every IR instruction of the timed function, and print
    /// where it went (to standard error). Profiled code runs slower: read the shares.
    #[arg(long)]
    pub profile: bool,
}

/// `--packed`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

/// `--placement`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementArg {
    Measured,
    Near,
    Far,
}

struct Timing {
    first_us: f64,
    per_call_us: Vec<f64>,
    inner: usize,
}

/// The contract's rules: first call alone; warm-up of at least 2 calls and 0.3 s; then
/// repetitions until the budget is spent (at least 5, at most 3000). A repetition is
/// `inner` calls, chosen so that it lasts at least 200 µs (the clock's own cost then stays
/// below 0.1%), and reports the time per call.
fn measure(budget: f64, mut call: impl FnMut() -> Result<(), Error>) -> Result<Timing, Error> {
    let t = Instant::now();
    call()?;
    let first_us = t.elapsed().as_secs_f64() * 1e6;
    let warm = Instant::now();
    let mut n = 0;
    while n < 2 || warm.elapsed() < Duration::from_millis(300) {
        call()?;
        n += 1;
    }
    let per_warm = warm.elapsed().as_secs_f64() / n as f64;
    let inner = ((200e-6 / per_warm).ceil() as usize).clamp(1, 100_000);
    let start = Instant::now();
    let mut per_call_us = Vec::new();
    while per_call_us.len() < 5
        || (start.elapsed().as_secs_f64() < budget && per_call_us.len() < 3000)
    {
        let t = Instant::now();
        for _ in 0..inner {
            call()?;
        }
        per_call_us.push(t.elapsed().as_secs_f64() * 1e6 / inner as f64);
    }
    Ok(Timing {
        first_us,
        per_call_us,
        inner,
    })
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

pub fn bench(args: BenchArgs) -> Result<(), Error> {
    lstmc::jit::set_placement(match args.placement {
        PlacementArg::Measured => lstmc::jit::Placement::Measured,
        PlacementArg::Near => lstmc::jit::Placement::Near,
        PlacementArg::Far => lstmc::jit::Placement::Far,
    });
    // A model of the user's: one measurement, named `custom`.
    let custom = match (&args.model, &args.input) {
        (Some(path), Some(input)) => {
            let spec = super::load_model(path)?;
            let input: [usize; 3] = match input.as_slice() {
                &[b, t, f] => [b, t, f],
                &[b, f] => [b, 1, f],
                other => {
                    return Err(Error::Usage(format!(
                        "--input takes BATCH,STEPS,FEATURES; got {other:?}"
                    )))
                }
            };
            let first = &spec.layers[0];
            let w = Workload {
                id: "custom",
                model: "",
                input,
                units: first.units,
                gates: first.kind.gates(),
            };
            Some((spec, w))
        }
        _ => None,
    };
    let wanted: Vec<&str> = if custom.is_some() {
        vec!["custom"]
    } else if args.workload == "all" {
        WORKLOADS.iter().map(|w| w.id).collect()
    } else {
        args.workload.split(',').collect()
    };
    for id in &wanted {
        let (spec, w) = match &custom {
            Some((spec, w)) => (spec.clone(), *w),
            None => {
                let w = WORKLOADS
                    .iter()
                    .find(|w| w.id.eq_ignore_ascii_case(id))
                    .ok_or_else(|| {
                        Error::Usage(format!(
                            "no workload `{id}`; the workloads are W1, W2, W3, W4, W5 (or `all`)"
                        ))
                    })?;
                let spec = lstmc::front::load(&format!("{}.model", w.id), w.model.as_bytes())?;
                (spec, *w)
            }
        };
        let w = &w;
        let weights = Weights::init(&spec, 0);
        let mut options = lstmc::jit::Options::default();
        options.tuning.threads = args.threads.max(1);
        options.profile = args.profile;
        if let Some(v) = args.full_unroll_max {
            options.passes.full_unroll_max = v;
        }
        if let Some(v) = args.partial_unroll_max {
            options.passes.partial_unroll_max = v;
        }
        if let Some(v) = args.gemm_crossover {
            options.tuning.gemm_crossover = v;
        }
        if let Some(v) = args.parallel_min {
            options.tuning.parallel_min = v;
        }
        if let Some(v) = args.packed {
            options.tuning.packed_weights = v == Switch::On;
        }
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(0);
        let x: Vec<f32> = (0..w.input.iter().product::<usize>())
            .map(|_| {
                // Normal by Box–Muller, as the contract's inputs are normal.
                let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        let mut model = CompiledModel::new(spec.clone(), &weights, options);
        let shape: Vec<usize> = if spec.input.sequence {
            w.input.to_vec()
        } else {
            vec![w.input[0], w.input[2]]
        };
        let per_sample = spec.layers.last().map_or(0, |l| l.units)
            * if spec.output_is_sequence() {
                w.input[1]
            } else {
                1
            };
        let mut y = vec![0.0f32; w.input[0] * per_sample];
        let flops =
            2.0 * (w.input[1] * w.input[0] * w.gates * w.units * (w.input[2] + w.units)) as f64;
        if args.phase != Phase::Train {
            let t = measure(args.budget, || model.predict_into(&x, &shape, &mut y))?;
            let shapes = lstmc::reference::batch_shapes(&spec, &shape)?;
            let compiled = model.compiled(shapes)?;
            let compile_ms = compiled.compile_time.as_secs_f64() * 1e3;
            print_profile(&format!("{} forward", w.id), &compiled);
            report(
                w,
                "forward",
                args.threads,
                &t,
                flops,
                serde_json::json!({"compile_ms": (compile_ms * 100.0).round() / 100.0}),
            );
        }
        if args.phase != Phase::Forward {
            train_phase(
                w, &spec, &weights, &x, &shape, options, &args, &mut rng, flops,
            )?;
        }
    }
    Ok(())
}

/// The contract's train phase (W1, W3, W4, W5: one step of forward, loss, backward and
/// update) and epoch phase (W2: 50 sequential batch-1 steps over 50 samples, states
/// carried, then reset); a model of the user's trains as its `compile` line says (else
/// with Keras's defaults, mse and rmsprop) on random targets of its output's shape.
#[allow(clippy::too_many_arguments)]
fn train_phase(
    w: &Workload,
    spec: &lstmc::model::ModelSpec,
    weights: &Weights,
    x: &[f32],
    shape: &[usize],
    options: lstmc::jit::Options,
    args: &BenchArgs,
    rng: &mut rand_pcg::Pcg64Mcg,
    flops: f64,
) -> Result<(), Error> {
    use lstmc::model::{Loss, Optimizer};
    // The contract: W1 SGD at 0.01, the others Adam at 1e-3 (Keras's defaults for both).
    let (loss, opt) = match w.id {
        "W1" => (Loss::Mse, Optimizer::keras_default("sgd")),
        "W2" => (
            Loss::CategoricalCrossentropy,
            Optimizer::keras_default("adam"),
        ),
        "custom" => {
            let (loss, opt) = spec.loss_and_optimizer();
            (loss, Some(opt))
        }
        _ => (Loss::Mse, Optimizer::keras_default("adam")),
    };
    let opt = opt.expect("known optimizers");
    let units = spec.layers.last().map_or(0, |l| l.units);
    let mut trainer = lstmc::train::Trainer::new(spec.clone(), weights.clone(), loss, opt, options);
    let one_hot = |rng: &mut rand_pcg::Pcg64Mcg| {
        let mut t = vec![0.0; units];
        t[rng.random_range(0..units)] = 1.0;
        t
    };
    if w.id == "W2" {
        let samples = 50;
        let xs: Vec<ndarray::ArrayD<f32>> = (0..samples)
            .map(|_| {
                ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(shape), |_| {
                    rng.random::<f32>() * 2.0 - 1.0
                })
            })
            .collect();
        let ts: Vec<ndarray::ArrayD<f64>> = (0..samples)
            .map(|_| {
                ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, units]), one_hot(rng))
                    .expect("sizes agree")
            })
            .collect();
        let t = measure(args.budget, || {
            for (xb, tb) in xs.iter().zip(&ts) {
                trainer.train_on_batch(xb, tb)?;
            }
            trainer.reset_states();
            Ok(())
        })?;
        trainer
            .step_functions()
            .for_each(|f| print_profile("W2 epoch", f));
        let median = {
            let mut s = t.per_call_us.clone();
            s.sort_by(f64::total_cmp);
            quantile(&s, 0.5)
        };
        report(
            w,
            "epoch",
            args.threads,
            &t,
            0.0,
            serde_json::json!({"steps": samples, "extrapolated_2000_epochs_s": (median * 2000.0 / 1e6 * 100.0).round() / 100.0}),
        );
        return Ok(());
    }
    let xa = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), x.to_vec())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let target = if w.id == "custom" {
        random_targets(spec, w, loss, rng)
    } else {
        ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[w.input[0], units]), |_| {
            rng.random::<f64>() * 2.0 - 1.0
        })
    };
    let t = measure(args.budget, || {
        trainer.train_on_batch(&xa, &target).map(|_| ())
    })?;
    trainer
        .step_functions()
        .for_each(|f| print_profile(&format!("{} train", w.id), f));
    report(
        w,
        "train",
        args.threads,
        &t,
        3.0 * flops,
        serde_json::json!({}),
    );
    Ok(())
}

/// Targets for a user's model: its last layer's output shape for this batch (and steps),
/// one-hot rows for the categorical cross-entropy, class indices for the sparse one,
/// values in [0, 1) for the binary one, in [-1, 1) otherwise.
fn random_targets(
    spec: &lstmc::model::ModelSpec,
    w: &Workload,
    loss: lstmc::model::Loss,
    rng: &mut rand_pcg::Pcg64Mcg,
) -> ndarray::ArrayD<f64> {
    use lstmc::model::Loss;
    let out = spec.output_shape(spec.layers.len().saturating_sub(1));
    // Unknown axes: the batch first, then the steps.
    let shape: Vec<usize> = out
        .0
        .iter()
        .enumerate()
        .map(|(i, d)| d.unwrap_or(if i == 0 { w.input[0] } else { w.input[1] }))
        .collect();
    let classes = *shape.last().unwrap_or(&1);
    let lead = &shape[..shape.len().saturating_sub(1)];
    match loss {
        Loss::CategoricalCrossentropy => {
            let mut t = ndarray::ArrayD::zeros(ndarray::IxDyn(&shape));
            for mut row in t.rows_mut() {
                row[rng.random_range(0..classes.max(1))] = 1.0;
            }
            t
        }
        Loss::SparseCategoricalCrossentropy => {
            ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(lead), |_| {
                rng.random_range(0..classes.max(1)) as f64
            })
        }
        Loss::BinaryCrossentropy => {
            ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&shape), |_| rng.random::<f64>())
        }
        Loss::Mse | Loss::Mae => ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&shape), |_| {
            rng.random::<f64>() * 2.0 - 1.0
        }),
    }
}

/// Prints where a profiled function's time went (`--profile`), to standard error: the
/// slowest instructions, then the time per kind of operation.
fn print_profile(what: &str, compiled: &lstmc::jit::Compiled) {
    let Some(profile) = &compiled.profile else {
        return;
    };
    let lines = profile.report(&compiled.func);
    let total: f64 = lines.iter().map(|l| l.ns_per_call).sum();
    if total <= 0.0 {
        return;
    }
    eprintln!(
        "profile of {what} (function `{}`): {:.2} µs per call counted",
        compiled.func.name,
        total / 1e3
    );
    eprintln!("  share    µs/call  passes  instruction");
    for l in lines.iter().take(25) {
        let inst: String = l.inst.chars().take(110).collect();
        eprintln!(
            "  {:5.1}%  {:8.3}  {:6.1}  {inst}",
            100.0 * l.ns_per_call / total,
            l.ns_per_call / 1e3,
            l.passes_per_call
        );
    }
    let mut kinds: Vec<(String, f64, f64)> = Vec::new();
    for l in &lines {
        match kinds.iter_mut().find(|(k, ..)| *k == l.kind) {
            Some(entry) => {
                entry.1 += l.ns_per_call;
                entry.2 += l.passes_per_call;
            }
            None => kinds.push((l.kind.clone(), l.ns_per_call, l.passes_per_call)),
        }
    }
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!("  by operation:");
    for (kind, ns, passes) in kinds {
        eprintln!(
            "  {:5.1}%  {:8.3}  {:6.1}  {kind}",
            100.0 * ns / total,
            ns / 1e3,
            passes
        );
    }
}

/// Prints one measurement in the peers' fields (plus `extra`).
fn report(
    w: &Workload,
    phase: &str,
    threads: usize,
    t: &Timing,
    flops: f64,
    extra: serde_json::Value,
) {
    let mut sorted = t.per_call_us.clone();
    sorted.sort_by(f64::total_cmp);
    let median = quantile(&sorted, 0.5);
    let gflops = (["W3", "W4", "W5", "custom"].contains(&w.id) && flops > 0.0)
        .then(|| (flops / (median * 1e3) * 100.0).round() / 100.0);
    let mut line = serde_json::json!({
        "peer": "lstmc",
        "version": env!("CARGO_PKG_VERSION"),
        "workload": w.id,
        "phase": phase,
        "threads": threads,
        "median_us": (median * 1000.0).round() / 1000.0,
        "p10_us": (quantile(&sorted, 0.1) * 1000.0).round() / 1000.0,
        "p90_us": (quantile(&sorted, 0.9) * 1000.0).round() / 1000.0,
        "reps": sorted.len(),
        "gflops": gflops,
        "variant": "jit",
        "first_call_us": (t.first_us * 10.0).round() / 10.0,
        "calls_per_rep": t.inner,
    });
    if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            l.insert(k.clone(), v.clone());
        }
    }
    outln!("{line}");
}
