//! A model's weights: one tensor per Keras weight, named `layers.{i}.{name}`
//! and shaped as Keras shapes it; read from and written to safetensors
//! (float32). Writes are atomic: a temporary file in the same folder, synced,
//! then renamed over the target, so a crash never leaves a half-written file.

use crate::error::{Error, Result};
use crate::model::ModelSpec;
use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The weights of a model, in model order (layer by layer; kernel, recurrent_kernel, bias).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    /// `(name, tensor)` pairs.
    pub tensors: Vec<(String, ArrayD<f64>)>,
}

/// The file name of weight `name` of layer `layer`.
pub fn weight_name(layer: usize, name: &str) -> String {
    format!("layers.{layer}.{name}")
}

impl Weights {
    /// Fresh weights from the layers' initializers.
    pub fn init(spec: &ModelSpec, seed: u64) -> Weights {
        let mut tensors = Vec::new();
        for (i, layer) in spec.layers.iter().enumerate() {
            for (w, t) in layer
                .weights()
                .iter()
                .zip(crate::init::layer_weights(layer, i, seed))
            {
                tensors.push((weight_name(i, w.name), t));
            }
        }
        Weights { tensors }
    }

    /// Checks named tensors against the model: none missing, none extra, each of Keras's shape.
    pub fn from_named(
        spec: &ModelSpec,
        mut named: BTreeMap<String, ArrayD<f64>>,
        origin: &str,
    ) -> Result<Weights> {
        let mut tensors = Vec::new();
        let mut problems = Vec::new();
        for (i, layer) in spec.layers.iter().enumerate() {
            for w in layer.weights() {
                let name = weight_name(i, w.name);
                match named.remove(&name) {
                    None => problems.push(format!(
                        "missing tensor `{name}` (shape {:?}, {} {})",
                        w.shape,
                        layer.kind.name(),
                        layer.name
                    )),
                    Some(t) if t.shape() != w.shape.as_slice() => problems.push(format!(
                        "tensor `{name}` has shape {:?}, but {} {} needs {:?}",
                        t.shape(),
                        layer.kind.name(),
                        layer.name,
                        w.shape
                    )),
                    Some(t) => tensors.push((name, t)),
                }
            }
        }
        for extra in named.keys() {
            problems.push(format!(
                "unexpected tensor `{extra}`: the model has no such weight"
            ));
        }
        if problems.is_empty() {
            Ok(Weights { tensors })
        } else {
            Err(Error::Weights(format!(
                "{origin} does not fit model `{}`:\n  {}",
                spec.name,
                problems.join("\n  ")
            )))
        }
    }

    /// The tensor named `layers.{layer}.{name}`.
    pub fn get(&self, layer: usize, name: &str) -> Option<&ArrayD<f64>> {
        let key = weight_name(layer, name);
        self.tensors.iter().find(|(n, _)| *n == key).map(|(_, t)| t)
    }

    /// Reads a safetensors file (float32 or float64 tensors).
    pub fn load(spec: &ModelSpec, path: &Path) -> Result<Weights> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Weights::from_safetensors(spec, &bytes, &path.display().to_string())
    }

    /// Parses safetensors bytes.
    pub fn from_safetensors(spec: &ModelSpec, bytes: &[u8], origin: &str) -> Result<Weights> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            Error::Weights(format!("{origin} is not a valid safetensors file: {e}"))
        })?;
        let mut named = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")))
                    .collect(),
                other => {
                    return Err(Error::Weights(format!(
                        "{origin}: tensor `{name}` is {other:?}; lstmc reads F32 or F64"
                    )))
                }
            };
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::Weights(format!(
                    "{origin}: tensor `{name}` holds a non-finite value ({}) at flat index {bad}",
                    values[bad]
                )));
            }
            let t = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
                .map_err(|e| Error::Weights(format!("{origin}: tensor `{name}`: {e}")))?;
            named.insert(name, t);
        }
        Weights::from_named(spec, named, origin)
    }

    /// The weights as safetensors bytes (float32).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, t)| {
                let bytes = t.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
                (n.clone(), t.shape().to_vec(), bytes)
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = buffers
            .iter()
            .map(|(n, shape, b)| {
                TensorView::new(Dtype::F32, shape.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::Internal(format!("safetensors view of {n}: {e}")))
            })
            .collect::<Result<_>>()?;
        safetensors::serialize(views, None)
            .map_err(|e| Error::Internal(format!("safetensors: {e}")))
    }

    /// Writes the weights to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_safetensors()?)
    }
}

/// Writes `bytes` to `path` so that `path` holds either its old content or all
/// of the new, never a part: temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".lstmc-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
