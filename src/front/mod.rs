//! The front end: `.model` text → spanned AST → checked [`ModelSpec`].
//!
//! Every stage reports [`Diagnostic`]s that point into the source; nothing
//! here panics on any input (a fuzz target holds it to that).

pub mod ast;
pub mod check;
pub mod diag;
pub mod options;
pub mod parse;
pub mod source;

pub use diag::{Diagnostic, Diagnostics};
pub use source::{SourceFile, Span};

use crate::model::ModelSpec;

/// Parses and checks `.model` source bytes.
pub fn load(name: &str, bytes: &[u8]) -> Result<ModelSpec, Diagnostics> {
    let source = parse::decode(name, bytes)?;
    let ast = match parse::parse(&source) {
        Ok(ast) => ast,
        Err(items) => return Err(Diagnostics { source, items }),
    };
    check::check(&source, &ast).map_err(|items| Diagnostics { source, items })
}
