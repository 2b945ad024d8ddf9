//! lstmc: a compiler for recurrent neural networks.
//!
//! A `.model` file (Keras's Sequential model written as text) is parsed and
//! checked by the [`front`] end into a [`model::ModelSpec`], lowered into the
//! [`ir`], and run by the [`interp`] (the reference oracle).

#![deny(unsafe_code)]

pub mod arrays;
pub mod error;
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
