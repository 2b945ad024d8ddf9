//! Shared helpers for the integration tests: the Keras fixtures (copied from
//! the shared reference set into tests/fixtures/keras) turned into `.model`
//! text, weights and batches.
#![allow(dead_code)]

use lstmc::model::ModelSpec;
use lstmc::weights::Weights;
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

pub mod random;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keras")
}

pub fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/keras exists")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "json")
                .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

pub struct Fixture {
    pub name: String,
    pub json: Value,
}

pub fn load(name: &str) -> Fixture {
    let text = std::fs::read_to_string(fixtures_dir().join(format!("{name}.json")))
        .expect("fixture readable");
    Fixture {
        name: name.to_string(),
        json: serde_json::from_str(&text).expect("fixture is JSON"),
    }
}

pub fn array(v: &Value) -> ArrayD<f64> {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data: Vec<f64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_f64().unwrap())
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap()
}

impl Fixture {
    /// The fixture's model as `.model` text, written from its layer list.
    pub fn model_text(&self) -> String {
        let mut out = format!("# Keras fixture {}\nmodel {}\n", self.name, self.name);
        let batch = self.json["batch_size"].as_u64().unwrap();
        for (i, l) in self.json["layers"].as_array().unwrap().iter().enumerate() {
            let mut line = format!("{} {}", l["type"].as_str().unwrap(), l["units"]);
            if let Some(d) = l["input_dim"].as_u64() {
                line += &format!(" input_dim={d}");
            }
            if let Some(t) = l["input_length"].as_u64() {
                line += &format!(" input_length={t}");
            }
            if i == 0 && self.stateful() {
                line += &format!(" batch_size={batch}");
            }
            for flag in ["return_sequences", "stateful", "go_backwards"] {
                if l[flag].as_bool() == Some(true) {
                    line += &format!(" {flag}");
                }
            }
            line += &format!(" activation={}", l["activation"].as_str().unwrap());
            if let Some(ra) = l["recurrent_activation"].as_str() {
                if l["type"] != "SimpleRNN" {
                    line += &format!(" recurrent_activation={ra}");
                }
            }
            if l["use_bias"].as_bool() == Some(false) {
                line += " use_bias=false";
            }
            if let Some(ra) = l["reset_after"].as_bool() {
                line += &format!(" reset_after={ra}");
            }
            out += &line;
            out.push('\n');
        }
        out
    }

    pub fn stateful(&self) -> bool {
        self.json["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["stateful"].as_bool() == Some(true))
    }

    pub fn spec(&self) -> ModelSpec {
        let text = self.model_text();
        lstmc::front::load(&format!("{}.model", self.name), text.as_bytes())
            .unwrap_or_else(|d| panic!("{}", d.render()))
    }

    pub fn named_weights(&self, key: &str) -> BTreeMap<String, ArrayD<f64>> {
        named(&self.json[key])
    }

    /// The weights after the `train` block's steps.
    pub fn final_weights(&self, spec: &ModelSpec) -> Weights {
        Weights::from_named(
            spec,
            named(&self.json["train"]["final_weights"]),
            &self.name,
        )
        .unwrap()
    }

    /// The `train` block's optimizer.
    pub fn optimizer(&self) -> lstmc::model::Optimizer {
        let tr = &self.json["train"];
        let lr = tr["learning_rate"].as_f64().unwrap();
        match tr["optimizer"].as_str().unwrap() {
            "sgd" => lstmc::model::Optimizer::Sgd {
                learning_rate: lr,
                momentum: 0.0,
                nesterov: false,
            },
            "adam" => lstmc::model::Optimizer::Adam {
                learning_rate: lr,
                beta_1: tr["beta_1"].as_f64().unwrap(),
                beta_2: tr["beta_2"].as_f64().unwrap(),
                epsilon: tr["epsilon"].as_f64().unwrap(),
            },
            other => panic!("{}: optimizer {other}", self.name),
        }
    }

    /// The loss of the `loss` block.
    pub fn loss_kind(&self) -> lstmc::model::Loss {
        match self.json["loss"]["name"].as_str().unwrap() {
            "mse" => lstmc::model::Loss::Mse,
            "categorical_crossentropy" => lstmc::model::Loss::CategoricalCrossentropy,
            other => panic!("{}: loss {other}", self.name),
        }
    }
}

/// Inputs of a gradient function: x, the weights, zero states, dy.
pub fn gradient_inputs(
    g: &lstmc::ir::Function,
    x: &ArrayD<f64>,
    w: &Weights,
    dy: &ArrayD<f64>,
) -> Vec<ArrayD<f64>> {
    use lstmc::ir::InputRole;
    g.inputs()
        .map(|(r, p)| match r {
            InputRole::X => x.clone(),
            InputRole::Weight { layer, name } => w.get(layer, name).unwrap().clone(),
            InputRole::State { .. } => ArrayD::zeros(g.shape(p)),
            InputRole::DY => dy.clone(),
            r => panic!("a gradient function takes no {r}"),
        })
        .collect()
}

/// `[{layer, name, shape, data}]` as `layers.{layer}.{name}` tensors.
fn named(list: &Value) -> BTreeMap<String, ArrayD<f64>> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                format!("layers.{}.{}", w["layer"], w["name"].as_str().unwrap()),
                array(w),
            )
        })
        .collect()
}

impl Fixture {
    pub fn weights(&self, spec: &ModelSpec) -> Weights {
        Weights::from_named(spec, self.named_weights("weights"), &self.name).unwrap()
    }

    pub fn batches(&self) -> &Vec<Value> {
        self.json["batches"].as_array().unwrap()
    }
}

/// Asserts `|a - b| <= tol * max(1, |b|)` everywhere, naming the first failure.
pub fn assert_close(what: &str, got: &ArrayD<f64>, want: &ArrayD<f64>, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        // Both overflowing the same way is agreement (random models can overflow).
        if (g.is_nan() && w.is_nan()) || (g.is_infinite() && g == w) {
            continue;
        }
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}: element {i}: got {g}, want {w} (tolerance {tol})"
        );
    }
}

/// Builds `args` (`--lib`, `--example NAME`) in release mode with the test's own cargo
/// and returns the files cargo reports for the target named `target`.
pub fn cargo_build(args: &[&str], target: &str) -> Vec<PathBuf> {
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--message-format=json"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == target {
            files.extend(
                msg["filenames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str())
                    .map(PathBuf::from),
            );
            if let Some(exe) = msg["executable"].as_str() {
                files.push(PathBuf::from(exe));
            }
        }
    }
    files
}

/// Options that put every product on the host (GEMM or few-row kernels) and split every
/// product, fused kernel and update between two threads, at their smallest sizes: the
/// threaded paths, exercised on models of every size; and every product in a loop that
/// the `pack` pass may take (more than 4 rows) reads its weight packed.
pub fn split_options() -> lstmc::jit::Options {
    let mut options = lstmc::jit::Options::default();
    options.tuning.gemm_crossover = 1;
    options.tuning.parallel_min = 1;
    options.tuning.parallel_elems = 1;
    options.tuning.parallel_few_rows = 1;
    options.tuning.threads = 2;
    options.tuning.packed_weights = true;
    options.passes.pack_min = 1;
    options
}

/// Runs the `lstmc` binary with `args` in `dir`, checks that it succeeds (else panics
/// with its standard error), and returns its standard output.
pub fn lstmc_ok(args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lstmc"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lstmc {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Compiles `f` to native code (default options) and runs it once on `inputs`, each
/// staged as float32: its outputs in order, as f64 (exactly the float32 values).
pub fn run_native(f: &lstmc::ir::Function, inputs: &[ArrayD<f64>]) -> Vec<ArrayD<f64>> {
    let c = lstmc::jit::compile(f.clone(), &lstmc::jit::Options::default()).unwrap();
    let staged: Vec<lstmc::jit::Buf> = inputs
        .iter()
        .map(|a| {
            let mut s = lstmc::jit::Buf::new();
            let v: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            lstmc::runtime::stage(&v, *a.shape().last().unwrap_or(&1), &mut s);
            s
        })
        .collect();
    let refs: Vec<&[f32]> = staged.iter().map(|s| &s[..]).collect();
    let mut arena = vec![0.0f32; c.plan.arena_len];
    c.code.call(&refs, &mut arena).unwrap();
    f.outputs
        .iter()
        .zip(&c.plan.outputs)
        .map(|((_, v), loc)| {
            let mut out = vec![0.0f32; loc.rows * loc.cols];
            lstmc::runtime::gather(&arena, loc, &mut out);
            let out = out.into_iter().map(f64::from).collect();
            ArrayD::from_shape_vec(IxDyn(f.shape(*v)), out).unwrap()
        })
        .collect()
}
