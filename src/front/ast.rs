//! The spanned syntax tree of a `.model` file: statements as written, before
//! any meaning is checked. Every node keeps its [`Span`].

use super::source::Span;

/// A parsed file: its statements in order.
#[derive(Clone, Debug, Default)]
pub struct Ast {
    /// The statements, one per (continued) line.
    pub statements: Vec<Statement>,
}

/// What a statement is, by its first word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    /// `model NAME`
    Model,
    /// `LSTM`, `GRU`, `SimpleRNN` or `Dense`.
    Layer(String),
    /// `compile ...`
    Compile,
    /// `fit ...`
    Fit,
    /// `data ...`
    Data,
    /// Any other first word (an error, reported with a suggestion).
    Unknown(String),
}

/// One statement.
#[derive(Clone, Debug)]
pub struct Statement {
    /// Its first word.
    pub head: Head,
    /// The span of the first word.
    pub head_span: Span,
    /// Its arguments in order.
    pub args: Vec<Arg>,
    /// The whole statement.
    pub span: Span,
}

/// A positional value or an option.
#[derive(Clone, Debug)]
pub enum Arg {
    /// A bare value: the units of a layer, the name of a model.
    Positional(Value),
    /// `name=value` or a bare `name`.
    Option(OptionArg),
}

/// `name=value`, or a bare `name` (which means `name=true`).
#[derive(Clone, Debug)]
pub struct OptionArg {
    /// The option's name.
    pub name: String,
    /// Whether the name is in the language's vocabulary at all.
    pub known: bool,
    /// The span of the name.
    pub name_span: Span,
    /// The value, `None` for a bare flag.
    pub value: Option<Value>,
    /// The whole option.
    pub span: Span,
}

/// A literal value with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// The value.
    pub kind: ValueKind,
    /// Where it is written.
    pub span: Span,
}

/// The forms a value can take.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueKind {
    /// `128`, `-3`
    Int(i64),
    /// `0.001`, `1e-3`
    Float(f64),
    /// `true`, `false`
    Bool(bool),
    /// `tanh`, `adam`
    Ident(String),
    /// `"data/song.csv"`, escapes resolved
    Str(String),
}

impl ValueKind {
    /// How the value is described in messages ("the integer 3").
    pub fn describe(&self) -> String {
        match self {
            ValueKind::Int(i) => format!("the integer {i}"),
            ValueKind::Float(f) => format!("the number {f}"),
            ValueKind::Bool(b) => format!("`{b}`"),
            ValueKind::Ident(s) => format!("the name `{s}`"),
            ValueKind::Str(s) => format!("the string {s:?}"),
        }
    }
}
