//! lstmc: a compiler for recurrent neural networks.
//!
//! A `.model` file (Keras's Sequential model written as text) is parsed and
//! checked by the [`front`] end into a [`model::ModelSpec`], lowered into the
//! [`ir`], optimized by the [`passes`], differentiated by [`autodiff`] and
//! compiled to native code by the [`jit`]; the [`interp`] is the f64 oracle
//! of all of it.
//!
//! The library API starts at [`Model`]: parse, [`Model::compile`], then
//! predict, train and serve with a [`Network`] and its [`Predictor`]s. The C
//! ABI (`include/lstmc.h`) is in `src/jit/native/capi.rs`.

#![deny(unsafe_code)]

/// The README's Rust examples, run as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod arrays;
pub mod error;
pub mod files;
pub mod front;
pub mod init;
pub mod interp;
pub mod ir;
pub mod model;
pub mod weights;

pub use api::{CompileOptions, Model, Network};
pub use error::{Error, Result};
pub use runtime::{Predictor, Stream};
pub use train::{EpochLog, FitOptions};
pub use weights::Weights;
pub mod api;
pub mod autodiff;
pub mod data;
pub mod jit;
pub mod loss;
pub mod optim;
pub mod passes;
pub mod reference;
pub mod runtime;
pub mod train;
