//! Subcommands of the `lstmc` binary.

use clap::{Parser, Subcommand};

/// `print!` that ends the program quietly when stdout is closed (`lstmc asm m | head`)
/// instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let mut so = std::io::stdout().lock();
        if let Err(e) = write!(so, $($arg)*).and_then(|_| so.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// `println!` with the same care.
macro_rules! outln {
    ($($arg:tt)*) => {{
        out!($($arg)*);
        out!("\n");
    }};
}

use lstmc::Error;
use std::path::PathBuf;
use std::process::ExitCode;

mod bench;
mod run;

const EXAMPLES: &str = "\
Examples:
  lstmc run                                   train and play the built-in butterfly example
  lstmc check examples/butterfly.model        parse, check, print a Keras-style summary
  lstmc ir examples/butterfly.model           print the IR as lowered
  lstmc run m.model --weights w.safetensors --predict x.npy --output y.npy";

/// lstmc: a compiler for recurrent neural networks (Keras-style .model files to native code).
#[derive(Parser, Debug)]
#[command(name = "lstmc", version, about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse and check a model; print a Keras-style summary.
    Check {
        /// The .model file.
        model: PathBuf,
    },
    /// Print the IR of a model.
    Ir {
        /// The .model file.
        model: PathBuf,
        /// Batch size to build for (default: the model's, else 1).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Steps per sample, when the model does not fix input_length.
        #[arg(long)]
        input_length: Option<usize>,
        /// Leave out the `# layer, line:col` notes.
        #[arg(long)]
        no_locations: bool,
        /// Print the IR after this pass (fuse-gates, hoist, unroll, fold, dce, cse, concat, reverse, pack, transpose, fuse-elementwise, schedule-updates);
        /// `all` for the end of the pipeline. Default: as lowered.
        #[arg(long, value_name = "PASS")]
        after: Option<String>,
        /// Print the gradient function (forward with its tape, then backward) instead.
        #[arg(long)]
        backward: bool,
        /// Print the training step instead: forward, loss, backward and the optimizer's
        /// updates, as the `compile` line says (default: mse and rmsprop, as Keras's).
        #[arg(long, conflicts_with = "backward")]
        train: bool,
    },
    /// Compile a model, then train, evaluate and predict as its file and flags say.
    Run(run::RunArgs),
    /// Time the benchmark workloads W1..W5; one JSON line per measurement.
    Bench(bench::BenchArgs),
    /// Print the Cranelift IR and the machine code of every function generated for a
    /// model.
    Asm {
        /// The .model file.
        model: PathBuf,
        /// Batch size to build for (default: the model's, else 1).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Steps per sample, when the model does not fix input_length.
        #[arg(long)]
        input_length: Option<usize>,
        /// Generate code for this many threads: fused kernels large enough to split
        /// between them become functions of their own, printed too.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print the training step's code instead: forward, loss, backward and the
        /// optimizer's updates, as the `compile` line says (default: mse and rmsprop).
        #[arg(long)]
        train: bool,
    },
}

/// Threads to use: the flag, else every core.
pub fn threads(flag: Option<usize>) -> usize {
    flag.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// Parses the command line and runs it; returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Check { model } => check(&model),
        Command::Ir {
            model,
            batch_size,
            input_length,
            no_locations,
            after,
            backward,
            train,
        } => ir(
            &model,
            batch_size,
            input_length,
            no_locations,
            after.as_deref(),
            (backward, train),
        ),
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::bench(args),
        Command::Asm {
            model,
            batch_size,
            input_length,
            threads,
            train,
        } => asm(&model, batch_size, input_length, threads, train),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                Error::Model(d) => eprint!("{}", d.render()),
                e => eprintln!("error: {e}"),
            }
            ExitCode::from(if e.is_internal() { 2 } else { 1 })
        }
    }
}

/// Reads and checks a `.model` file.
pub fn load_model(path: &std::path::Path) -> Result<lstmc::model::ModelSpec, Error> {
    let bytes = lstmc::files::read(path)?;
    Ok(lstmc::front::load(&path.display().to_string(), &bytes)?)
}

fn check(model: &std::path::Path) -> Result<(), Error> {
    let spec = load_model(model)?;
    out!("{}", spec.summary());
    Ok(())
}

fn ir(
    model: &std::path::Path,
    batch: Option<usize>,
    time: Option<usize>,
    no_locations: bool,
    after: Option<&str>,
    (backward, train): (bool, bool),
) -> Result<(), Error> {
    let spec = load_model(model)?;
    let shapes = sizes(&spec, batch, time)?;
    // The gradient and the training step are of the model as it trains (with dropout).
    let mut f = if backward || train {
        lstmc::ir::lower::lower_training(&spec, shapes)?
    } else {
        lstmc::ir::lower::lower(&spec, shapes)?
    };
    lstmc::ir::verify::verify(&f)?;
    if backward {
        f = lstmc::autodiff::gradient(&f)?;
        lstmc::ir::verify::verify(&f)?;
    }
    if train {
        f = train_step(&spec, &f)?;
        lstmc::ir::verify::verify(&f)?;
    }
    if let Some(pass) = after {
        let names = lstmc::passes::names();
        let until = match pass {
            "all" => None,
            p if names.contains(&p) => Some(p),
            p => {
                let hint =
                    lstmc::front::diag::did_you_mean(p, names.iter().copied()).unwrap_or_default();
                return Err(Error::Usage(format!(
                    "no pass `{p}`; the passes, in order: {}, or `all`. {hint}",
                    names.join(", ")
                )));
            }
        };
        lstmc::passes::optimize(
            &mut f,
            &lstmc::jit::Options::default().pass_options(),
            until,
        )?;
    }
    out!(
        "{}",
        lstmc::ir::print::print(&f, (!no_locations).then_some(&spec.source))
    );
    Ok(())
}

/// The training step of a lowered forward function, with the loss and optimizer of the
/// model's `compile` line (else Keras's defaults: mse and rmsprop).
fn train_step(
    spec: &lstmc::model::ModelSpec,
    f: &lstmc::ir::Function,
) -> Result<lstmc::ir::Function, Error> {
    let (loss, optimizer) = spec.loss_and_optimizer();
    Ok(lstmc::autodiff::train_step(f, loss, optimizer)?)
}

fn asm(
    model: &std::path::Path,
    batch: Option<usize>,
    time: Option<usize>,
    threads: usize,
    train: bool,
) -> Result<(), Error> {
    let spec = load_model(model)?;
    let shapes = sizes(&spec, batch, time)?;
    let f = if train {
        train_step(&spec, &lstmc::ir::lower::lower_training(&spec, shapes)?)?
    } else {
        lstmc::ir::lower::lower(&spec, shapes)?
    };
    let mut options = lstmc::jit::Options {
        keep_text: true,
        ..Default::default()
    };
    options.tuning.threads = threads.max(1);
    let c = lstmc::jit::compile(f, &options)?;
    outln!(
        "; {} of model `{}`, batch {}, {} steps, {} thread(s): arena of {} floats, compiled in {:.2} ms",
        if train { "training step" } else { "forward function" },
        spec.name,
        shapes.batch,
        shapes.time,
        options.tuning.threads,
        c.plan.arena_len,
        c.compile_time.as_secs_f64() * 1e3
    );
    outln!("\n;; Cranelift IR\n{}", c.clif.unwrap_or_default());
    outln!(
        ";; machine code (after register allocation)\n{}",
        c.machine.unwrap_or_default()
    );
    Ok(())
}

/// The batch size and length to build for: flags, else the model's, else 1 / an error.
pub fn sizes(
    spec: &lstmc::model::ModelSpec,
    batch: Option<usize>,
    time: Option<usize>,
) -> Result<lstmc::ir::lower::Shapes, Error> {
    let batch = batch.or(spec.input.batch).unwrap_or(1);
    let time = match (spec.input.sequence, spec.input.time, time) {
        (false, _, _) => 1,
        (true, Some(t), None) => t,
        (true, Some(t), Some(f)) if t == f => t,
        (true, Some(t), Some(f)) => {
            return Err(Error::Usage(format!(
                "--input-length {f} contradicts the model's input_length={t}"
            )))
        }
        (true, None, Some(f)) => f,
        (true, None, None) => {
            return Err(Error::Usage(format!(
                "model `{}` has no input_length; give --input-length T to build it",
                spec.name
            )))
        }
    };
    if batch == 0 || time == 0 {
        return Err(Error::Usage(
            "batch size and input length must be at least 1".into(),
        ));
    }
    Ok(lstmc::ir::lower::Shapes { batch, time })
}
