//! Embedding lstmc in a Rust program: load a `.model` file and its weights, then
//! stream predictions sample by sample through a stateful model.
//!
//! ```text
//! cargo run --release --example embed -- [MODEL] [WEIGHTS]
//! ```
//!
//! MODEL defaults to `examples/butterfly.model`, the Keras tutorial's stateful LSTM,
//! and WEIGHTS to `butterfly.safetensors`. When WEIGHTS does not exist yet, the model
//! is first trained as its `fit` line says on its `data` (the built-in song) and the
//! weights are saved there; later runs load them.
//!
//! Then the song is played back the way a program serving a live sequence would:
//! one window of notes at a time through a [`lstmc::Stream`], whose states carry
//! from one call to the next, each predicted note becoming the next input. Each
//! line printed is `step: window -> note (probability)`, and the last lines the
//! whole generated song and how many of its notes match the real one.

use lstmc::data::{encode_note, note_code, note_name, BUTTERFLY};
use lstmc::{CompileOptions, Model};
use ndarray::{ArrayD, IxDyn};
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() > 2 || args.iter().any(|a| a.starts_with('-')) {
        eprintln!("usage: embed [MODEL] [WEIGHTS]");
        return ExitCode::from(2);
    }
    let model = args
        .first()
        .map_or("examples/butterfly.model", String::as_str);
    let weights = args.get(1).map_or("butterfly.safetensors", String::as_str);
    match run(Path::new(model), Path::new(weights)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(model_path: &Path, weights: &Path) -> Result<(), lstmc::Error> {
    let model = Model::from_file(model_path)?;
    let spec = model.spec().clone();
    let mut net = model.compile(&CompileOptions::default())?;

    if weights.exists() {
        net.load_weights(weights)?;
        eprintln!("loaded {}", weights.display());
    } else {
        let base = model_path.parent().unwrap_or(Path::new("."));
        let Some(data) = lstmc::data::load(&spec, base)? else {
            return Err(lstmc::Error::Usage(format!(
                "{} has no weights yet and {} has no data line to train on",
                weights.display(),
                model_path.display()
            )));
        };
        let Some(y) = &data.y else {
            return Err(lstmc::Error::Usage(
                "the model's data has no targets".into(),
            ));
        };
        let options = net.fit_options();
        eprintln!("training {} epochs...", options.epochs);
        let logs = net.fit(
            data.x.mapv(|v| v as f32).view(),
            y.mapv(|v| v as f32).view(),
            &options,
        )?;
        if let Some(last) = logs.last() {
            match (net.metric(), last.metric) {
                (Some(m), Some(v)) => eprintln!("loss {:.4}, {} {v:.3}", last.loss, m.name()),
                _ => eprintln!("loss {:.4}", last.loss),
            }
        }
        net.save_weights(weights)?;
        eprintln!("saved {}", weights.display());
    }

    // The song as input: a window of notes per sample, each note encoded as the data
    // line says (one feature, index / 13, or two, scale and length).
    let (window, features) = (spec.input.time.unwrap_or(0), spec.input.features);
    let classes = spec.layers.last().map_or(0, |l| l.units);
    if !spec.input.sequence
        || spec.output_is_sequence()
        || !(1..BUTTERFLY.len()).contains(&window)
        || !(1..=2).contains(&features)
        || classes != 12
    {
        return Err(lstmc::Error::Usage(format!(
            "{} does not play the song: it needs windows of notes with 1 or 2 features in \
             and 12 note classes out",
            model_path.display()
        )));
    }
    let mut codes: Vec<usize> = BUTTERFLY[..window]
        .iter()
        .filter_map(|n| note_code(n))
        .collect();
    let name = |c: usize| note_name(c).unwrap_or_else(|| "?".into());

    let predictor = net.predictor();
    let mut stream = predictor.stream();
    for step in 0..BUTTERFLY.len() - window {
        let notes = &codes[step..step + window];
        let x: Vec<f32> = notes
            .iter()
            .flat_map(|&c| encode_note(c, features))
            .map(|v| v as f32)
            .collect();
        let x = ArrayD::from_shape_vec(IxDyn(&[1, window, features]), x)
            .map_err(|e| lstmc::Error::Internal(e.to_string()))?;
        let p = predictor.predict_stream(&mut stream, &x)?.y;
        let (next, prob) =
            p.iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        let shown: Vec<String> = notes.iter().map(|&c| name(c)).collect();
        println!("{step}: {} -> {} ({prob:.3})", shown.join(" "), name(next));
        codes.push(next);
    }
    let song: Vec<String> = codes.iter().map(|&c| name(c)).collect();
    let right = song[window..]
        .iter()
        .zip(&BUTTERFLY[window..])
        .filter(|(a, b)| a == b)
        .count();
    println!("song: {}", song.join(" "));
    println!(
        "notes generated right: {right} of {}",
        BUTTERFLY.len() - window
    );
    Ok(())
}
