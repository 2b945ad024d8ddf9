//! The library's error type. Each variant is a kind of failure a caller can
//! act on; the CLI maps [`Error::Internal`] to exit code 2 and everything
//! else to 1 (a user error).

use crate::front::Diagnostics;
use std::path::PathBuf;

/// Everything that can go wrong in lstmc.
///
/// ```
/// let err = lstmc::Model::parse("Dense 2 input_dim=3\n")?
///     .compile(&Default::default())?
///     .predict(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 4])).view())
///     .unwrap_err();
/// assert!(matches!(err, lstmc::Error::Usage(_)) && !err.is_internal());
/// # Ok::<(), lstmc::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `.model` file has errors (rendered with source snippets by `Display`).
    #[error("{0}")]
    Model(#[from] Diagnostics),
    /// A weights file does not fit the model.
    #[error("{0}")]
    Weights(String),
    /// An input array (or data file) is unusable.
    #[error("{0}")]
    Data(String),
    /// A call does not fit the compiled model (shape, batch size, state).
    #[error("{0}")]
    Usage(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// the file
        path: PathBuf,
        /// why
        source: std::io::Error,
    },
    /// A bug in lstmc: IR that fails verification, a kernel that misbehaves.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An I/O error about `path`.
    ///
    /// ```
    /// let e = lstmc::Error::io("w.safetensors", std::io::ErrorKind::NotFound.into());
    /// assert!(e.to_string().starts_with("w.safetensors: "));
    /// ```
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether this is lstmc's fault rather than the input's.
    ///
    /// ```
    /// assert!(lstmc::Error::Internal("bug".into()).is_internal());
    /// assert!(!lstmc::Error::Data("NaN in x".into()).is_internal());
    /// ```
    pub fn is_internal(&self) -> bool {
        matches!(self, Error::Internal(_))
    }
}

impl From<crate::ir::IrError> for Error {
    fn from(e: crate::ir::IrError) -> Error {
        Error::Internal(e.0)
    }
}

impl From<crate::interp::InterpError> for Error {
    fn from(e: crate::interp::InterpError) -> Error {
        Error::Internal(e.0)
    }
}

/// `Result` with lstmc's [`Error`].
///
/// ```
/// fn parse(src: &str) -> lstmc::Result<usize> {
///     Ok(lstmc::Model::parse(src)?.spec().layers.len())
/// }
/// assert_eq!(parse("Dense 1 input_dim=1\nDense 2\n").unwrap(), 2);
/// assert!(parse("Dense").is_err());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;
