//! `lstmc run`: compile, then train, evaluate and predict.

use clap::Args;
use lstmc::reference::Reference;
use lstmc::weights::Weights;
use lstmc::Error;
use std::path::PathBuf;

/// Flags of `lstmc run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The .model file (default: the built-in butterfly example).
    pub model: Option<PathBuf>,
    /// Load weights from a safetensors file instead of initializing them.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Inputs to predict (.npy, or .npz with one array), shaped (N, T, F) or (N, F).
    #[arg(long)]
    pub predict: Option<PathBuf>,
    /// Write predictions here as float32 .npy instead of printing them.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Batch size (default: the model's, else 32 as Keras's predict).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed for weight initialization.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress output, only results.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: RunArgs) -> Result<(), Error> {
    let Some(model) = &args.model else {
        return Err(Error::Usage(
            "give a .model file to run (the built-in example needs training, which this build does not have yet)".into(),
        ));
    };
    let spec = super::load_model(model)?;
    let weights = match &args.weights {
        Some(w) => Weights::load(&spec, w)?,
        None => Weights::init(&spec, args.seed),
    };
    let Some(predict) = &args.predict else {
        return Err(Error::Usage(
            "nothing to do: give --predict FILE (training is not built yet)".into(),
        ));
    };
    let x = lstmc::arrays::read(predict, Some("x"))?;
    let batch = args.batch_size.or(spec.input.batch).unwrap_or(32);
    let mut r = Reference::new(spec, weights);
    let y = r.predict(&x, batch)?;
    match &args.output {
        Some(out) => {
            lstmc::arrays::write_f32(out, &y)?;
            if !args.quiet {
                eprintln!("wrote predictions {:?} to {}", y.shape(), out.display());
            }
        }
        None if args.json => {
            let rows: Vec<f64> = y.iter().copied().collect();
            println!(
                "{}",
                serde_json::json!({"predictions": {"shape": y.shape(), "data": rows}})
            );
        }
        None => println!("{y:.6}"),
    }
    Ok(())
}
