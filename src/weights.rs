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
///
/// ```
/// let model = lstmc::Model::parse("LSTM 3 input_dim=2 input_length=4\nDense 1\n")?;
/// let w = lstmc::Weights::init(model.spec(), 0);
/// let names: Vec<&str> = w.tensors.iter().map(|(n, _)| n.as_str()).collect();
/// assert_eq!(names, ["layers.0.kernel", "layers.0.recurrent_kernel", "layers.0.bias",
///                    "layers.1.kernel", "layers.1.bias"]);
/// assert_eq!(w.get(0, "recurrent_kernel").unwrap().shape(), &[3, 12]); // gates i, f, c, o
/// # Ok::<(), lstmc::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    /// `(name, tensor)` pairs.
    pub tensors: Vec<(String, ArrayD<f64>)>,
}

/// The file name of weight `name` of layer `layer`.
///
/// ```
/// assert_eq!(lstmc::weights::weight_name(2, "bias"), "layers.2.bias");
/// ```
pub fn weight_name(layer: usize, name: &str) -> String {
    format!("layers.{layer}.{name}")
}

impl Weights {
    /// Fresh weights from the layers' initializers (Keras's: Glorot uniform kernels,
    /// orthogonal recurrent kernels, zero biases with an LSTM's forget gate at one),
    /// drawn from `seed`.
    ///
    /// ```
    /// let model = lstmc::Model::parse("LSTM 2 input_dim=1 input_length=1\n")?;
    /// let (a, b) = (lstmc::Weights::init(model.spec(), 7), lstmc::Weights::init(model.spec(), 7));
    /// assert_eq!(a, b);
    /// assert_eq!(a.get(0, "bias").unwrap().as_slice().unwrap(), &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    /// # Ok::<(), lstmc::Error>(())
    /// ```
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
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// let model = lstmc::Model::parse("Dense 2 input_dim=3\n")?;
    /// let mut named = BTreeMap::new();
    /// named.insert("layers.0.kernel".to_string(), ndarray::ArrayD::zeros(ndarray::IxDyn(&[3, 2])));
    /// let err = lstmc::Weights::from_named(model.spec(), named, "mine").unwrap_err();
    /// assert!(err.to_string().contains("missing tensor `layers.0.bias`"));
    /// # Ok::<(), lstmc::Error>(())
    /// ```
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
    ///
    /// ```
    /// let model = lstmc::Model::parse("SimpleRNN 5 input_dim=2 input_length=3\n")?;
    /// let w = lstmc::Weights::init(model.spec(), 0);
    /// assert_eq!(w.get(0, "kernel").unwrap().shape(), &[2, 5]);
    /// assert!(w.get(1, "kernel").is_none());
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn get(&self, layer: usize, name: &str) -> Option<&ArrayD<f64>> {
        let key = weight_name(layer, name);
        self.tensors.iter().find(|(n, _)| *n == key).map(|(_, t)| t)
    }

    /// Reads a safetensors file (float32 or float64 tensors), checked against the model.
    ///
    /// ```
    /// let model = lstmc::Model::parse("GRU 3 input_dim=2 input_length=4\n")?;
    /// let w = lstmc::Weights::init(model.spec(), 1);
    /// let path = std::env::temp_dir().join(format!("lstmc-doc-{}.safetensors", std::process::id()));
    /// w.save(&path)?;
    /// let back = lstmc::Weights::load(model.spec(), &path)?; // float32 on disk
    /// for ((name, a), (_, b)) in back.tensors.iter().zip(&w.tensors) {
    ///     assert_eq!(a, &b.mapv(|v| v as f32 as f64), "{name}");
    /// }
    /// std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn load(spec: &ModelSpec, path: &Path) -> Result<Weights> {
        let bytes = crate::files::read(path)?;
        Weights::from_safetensors(spec, &bytes, &path.display().to_string())
    }

    /// Parses safetensors bytes; `origin` names them in errors.
    ///
    /// ```
    /// let small = lstmc::Model::parse("Dense 2 input_dim=3\n")?;
    /// let big = lstmc::Model::parse("Dense 4 input_dim=3\n")?;
    /// let bytes = lstmc::Weights::init(small.spec(), 0).to_safetensors()?;
    /// let err = lstmc::Weights::from_safetensors(big.spec(), &bytes, "small.safetensors").unwrap_err();
    /// assert!(err.to_string().contains("layers.0.kernel"));
    /// # Ok::<(), lstmc::Error>(())
    /// ```
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
    ///
    /// ```
    /// let model = lstmc::Model::parse("Dense 2 input_dim=3\n")?;
    /// let w = lstmc::Weights::init(model.spec(), 0);
    /// let back = lstmc::Weights::from_safetensors(model.spec(), &w.to_safetensors()?, "bytes")?;
    /// assert_eq!(back.get(0, "kernel").unwrap().mapv(|v| v as f32), w.get(0, "kernel").unwrap().mapv(|v| v as f32));
    /// # Ok::<(), lstmc::Error>(())
    /// ```
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

    /// Writes the weights to `path` atomically (see [`write_atomic`]).
    ///
    /// ```
    /// let model = lstmc::Model::parse("Dense 1 input_dim=1\n")?;
    /// let err = lstmc::Weights::init(model.spec(), 0).save("/nonexistent/dir/w.safetensors".as_ref());
    /// assert!(matches!(err, Err(lstmc::Error::Io { .. })));
    /// # Ok::<(), lstmc::Error>(())
    /// ```
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_safetensors()?)
    }
}

/// Checks, before work whose result goes to `path` (training, a prediction), that a
/// file can be written there: its folder exists, and takes a new file, and `path` is not
/// a folder. Returns the folder.
///
/// ```
/// let err = lstmc::weights::check_writable("/nonexistent/w.safetensors".as_ref()).unwrap_err();
/// assert!(err.to_string().contains("the folder /nonexistent does not exist"));
/// ```
pub fn check_writable(path: &Path) -> Result<&Path> {
    let dir = folder(path)?;
    // A probe: creating a file says more than permission bits (read-only mounts, ACLs).
    tempfile::Builder::new()
        .prefix(".lstmc-")
        .suffix(".probe")
        .tempfile_in(dir)
        .map_err(|e| Error::io(path, cannot_create(dir, e)))?;
    Ok(dir)
}

/// The folder of `path`, which must exist; `path` must not be a folder.
fn folder(path: &Path) -> Result<&Path> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let problem = |what: String| Error::io(path, std::io::Error::other(what));
    if path.is_dir() {
        return Err(problem("is a folder; give a file name".into()));
    }
    if !dir.is_dir() {
        return Err(problem(format!(
            "cannot be written: the folder {} does not exist",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Why a file could not be created in `dir`, without the temporary file's name.
fn cannot_create(dir: &Path, e: std::io::Error) -> std::io::Error {
    let why = std::io::Error::from(e.kind());
    std::io::Error::new(
        e.kind(),
        format!(
            "cannot be written: no new file in {} ({why})",
            dir.display()
        ),
    )
}

/// Writes `bytes` to `path` so that `path` holds either its old content or all
/// of the new, never a part: temporary file in the same folder, fsync, rename.
///
/// ```
/// let path = std::env::temp_dir().join(format!("lstmc-atomic-{}", std::process::id()));
/// lstmc::weights::write_atomic(&path, b"old")?;
/// lstmc::weights::write_atomic(&path, b"new")?;
/// assert_eq!(std::fs::read(&path).unwrap(), b"new");
/// std::fs::remove_file(&path).unwrap();
/// # Ok::<(), lstmc::Error>(())
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = folder(path)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".lstmc-").suffix(".tmp");
    // The file gets the permissions a plain create would give it (read and write for
    // all, less the umask), or those of the file it replaces: a temporary file's own
    // are the owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder
        .tempfile_in(dir)
        .map_err(|e| Error::io(path, cannot_create(dir, e)))?;
    if let Ok(old) = std::fs::metadata(path) {
        tmp.as_file()
            .set_permissions(old.permissions())
            .map_err(|e| Error::io(tmp.path(), e))?;
    }
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
