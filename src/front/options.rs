//! The one table of options: which statement takes which option, and of what type.
//!
//! The grammar knows every option *name* (so a misspelling parses as an
//! unknown option); this table knows where each one is allowed. A test keeps
//! the two in sync.

use crate::model::{Activation, Initializer, Loss};

/// The statements (and layer kinds) options can belong to, as bits.
pub type Owners = u8;
/// `LSTM`
pub const LSTM: Owners = 1;
/// `GRU`
pub const GRU: Owners = 2;
/// `SimpleRNN`
pub const RNN: Owners = 4;
/// `Dense`
pub const DENSE: Owners = 8;
/// `compile`
pub const COMPILE: Owners = 16;
/// `fit`
pub const FIT: Owners = 32;
/// `data`
pub const DATA: Owners = 64;
/// every recurrent layer
pub const RECURRENT: Owners = LSTM | GRU | RNN;

/// The type of an option's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptType {
    /// An integer `>= 1`.
    Count,
    /// An integer `>= 0`.
    Natural,
    /// `true` or `false` (a bare name means `true`).
    Bool,
    /// A number in `[0, 1)`.
    Fraction,
    /// A number `> 0`.
    Positive,
    /// A number `>= 0`.
    NonNegative,
    /// One of these names.
    OneOf(&'static [&'static str]),
    /// A double-quoted string (a path).
    Str,
}

/// One option of the language.
#[derive(Clone, Copy, Debug)]
pub struct OptSpec {
    /// Its name.
    pub name: &'static str,
    /// Its value type.
    pub ty: OptType,
    /// The statements that take it.
    pub owners: Owners,
}

const fn opt(name: &'static str, ty: OptType, owners: Owners) -> OptSpec {
    OptSpec { name, ty, owners }
}

/// Names for `optimizer=`.
pub const OPTIMIZERS: &[&str] = &["sgd", "adam", "rmsprop"];
/// Names for `metrics=`.
pub const METRICS: &[&str] = &["accuracy", "mae", "mse"];
/// Names for `reset_states=`.
pub const RESET_STATES: &[&str] = &["epoch", "never"];
/// Names for `builtin=`.
pub const BUILTINS: &[&str] = &["butterfly"];

/// Every option of every statement.
pub const OPTIONS: &[OptSpec] = &[
    opt("input_dim", OptType::Count, RECURRENT | DENSE),
    opt("input_length", OptType::Count, RECURRENT | DENSE),
    opt("batch_size", OptType::Count, RECURRENT | DENSE | FIT),
    opt("return_sequences", OptType::Bool, RECURRENT),
    opt("stateful", OptType::Bool, RECURRENT),
    opt("go_backwards", OptType::Bool, RECURRENT),
    opt(
        "activation",
        OptType::OneOf(&Activation::NAMES),
        RECURRENT | DENSE,
    ),
    opt(
        "recurrent_activation",
        OptType::OneOf(&Activation::NAMES),
        LSTM | GRU,
    ),
    opt("use_bias", OptType::Bool, RECURRENT | DENSE),
    opt("unit_forget_bias", OptType::Bool, LSTM),
    opt("reset_after", OptType::Bool, GRU),
    opt(
        "kernel_initializer",
        OptType::OneOf(&Initializer::NAMES),
        RECURRENT | DENSE,
    ),
    opt(
        "recurrent_initializer",
        OptType::OneOf(&Initializer::NAMES),
        RECURRENT,
    ),
    opt(
        "bias_initializer",
        OptType::OneOf(&Initializer::NAMES),
        RECURRENT | DENSE,
    ),
    opt("dropout", OptType::Fraction, RECURRENT),
    opt("recurrent_dropout", OptType::Fraction, RECURRENT),
    opt("loss", OptType::OneOf(&Loss::NAMES), COMPILE),
    opt("optimizer", OptType::OneOf(OPTIMIZERS), COMPILE),
    opt("learning_rate", OptType::Positive, COMPILE),
    opt("momentum", OptType::NonNegative, COMPILE),
    opt("nesterov", OptType::Bool, COMPILE),
    opt("beta_1", OptType::Fraction, COMPILE),
    opt("beta_2", OptType::Fraction, COMPILE),
    opt("epsilon", OptType::Positive, COMPILE),
    opt("rho", OptType::Fraction, COMPILE),
    opt("metrics", OptType::OneOf(METRICS), COMPILE),
    opt("epochs", OptType::Count, FIT),
    opt("shuffle", OptType::Bool, FIT),
    opt("reset_states", OptType::OneOf(RESET_STATES), FIT),
    opt("validation_split", OptType::Fraction, FIT),
    opt("seed", OptType::Natural, FIT),
    opt("builtin", OptType::OneOf(BUILTINS), DATA),
    opt("window", OptType::Count, DATA),
    opt("features", OptType::Count, DATA),
    opt("x", OptType::Str, DATA),
    opt("y", OptType::Str, DATA),
    opt("csv", OptType::Str, DATA),
    opt("header", OptType::Bool, DATA),
    opt("predict", OptType::Str, DATA),
];

/// Looks an option up by name.
pub fn lookup(name: &str) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|o| o.name == name)
}

/// The names of the options a statement takes.
pub fn names_for(owner: Owners) -> impl Iterator<Item = &'static str> {
    OPTIONS
        .iter()
        .filter(move |o| o.owners & owner != 0)
        .map(|o| o.name)
}

/// "LSTM, GRU and SimpleRNN": who takes an option, for messages.
pub fn describe_owners(owners: Owners) -> String {
    let names: Vec<&str> = [
        (LSTM, "LSTM"),
        (GRU, "GRU"),
        (RNN, "SimpleRNN"),
        (DENSE, "Dense"),
        (COMPILE, "`compile`"),
        (FIT, "`fit`"),
        (DATA, "`data`"),
    ]
    .iter()
    .filter(|(bit, _)| owners & bit != 0)
    .map(|&(_, n)| n)
    .collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {}", init.join(", "), last),
    }
}
