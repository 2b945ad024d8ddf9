//! Checking: the spanned syntax tree → a [`ModelSpec`] with Keras's defaults,
//! or every error found, each pointing at its token.

use super::ast::{Arg, Ast, Head, OptionArg, Statement, Value, ValueKind};
use super::diag::{did_you_mean, Diagnostic};
use super::options::{self, describe_owners, OptType, Owners};
use super::source::{SourceFile, Span};
use crate::model::*;
use std::collections::HashMap;

/// The largest size of one axis (units, features, steps, batch) that lstmc accepts.
pub const MAX_DIM: i64 = 1 << 20;
/// The most parameters a model may have (4 GiB of float32).
pub const MAX_PARAMS: u128 = 1 << 30;

const HEADS: [&str; 8] = [
    "LSTM",
    "GRU",
    "SimpleRNN",
    "Dense",
    "model",
    "compile",
    "fit",
    "data",
];

/// Checks a parsed file.
pub fn check(source: &SourceFile, ast: &Ast) -> Result<ModelSpec, Vec<Diagnostic>> {
    let mut cx = Checker { diags: Vec::new() };
    let spec = cx.model(source, ast);
    match spec {
        Some(spec) if cx.diags.is_empty() => Ok(spec),
        _ => Err(cx.diags),
    }
}

struct Checker {
    diags: Vec<Diagnostic>,
}

/// A statement's options by name, after type checking.
struct Opts<'a> {
    given: HashMap<&'a str, (&'a OptionArg, Typed)>,
}

#[derive(Clone, Debug)]
enum Typed {
    Int(i64),
    Num(f64),
    Bool(bool),
    Name(String),
    Str(String),
}

impl Opts<'_> {
    fn int(&self, name: &str) -> Option<usize> {
        match self.given.get(name) {
            Some((_, Typed::Int(i))) => Some(*i as usize),
            _ => None,
        }
    }
    fn num(&self, name: &str) -> Option<f64> {
        match self.given.get(name) {
            Some((_, Typed::Num(f))) => Some(*f),
            _ => None,
        }
    }
    fn flag(&self, name: &str) -> Option<bool> {
        match self.given.get(name) {
            Some((_, Typed::Bool(b))) => Some(*b),
            _ => None,
        }
    }
    fn name(&self, name: &str) -> Option<&str> {
        match self.given.get(name) {
            Some((_, Typed::Name(s))) => Some(s.as_str()),
            _ => None,
        }
    }
    fn string(&self, name: &str) -> Option<String> {
        match self.given.get(name) {
            Some((_, Typed::Str(s))) => Some(s.clone()),
            _ => None,
        }
    }
    fn span(&self, name: &str) -> Option<Span> {
        self.given.get(name).map(|(o, _)| o.span)
    }
    fn has(&self, name: &str) -> bool {
        self.given.contains_key(name)
    }
}

impl Checker {
    fn error(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn model(&mut self, source: &SourceFile, ast: &Ast) -> Option<ModelSpec> {
        let mut name = None;
        let mut layers: Vec<(&Statement, LayerKind)> = Vec::new();
        let mut singles: HashMap<&'static str, &Statement> = HashMap::new();
        for (idx, st) in ast.statements.iter().enumerate() {
            let key = match &st.head {
                Head::Model => "model",
                Head::Compile => "compile",
                Head::Fit => "fit",
                Head::Data => "data",
                Head::Layer(k) => {
                    layers.push((
                        st,
                        LayerKind::from_name(k).expect("grammar admits only known kinds"),
                    ));
                    continue;
                }
                Head::Unknown(word) => {
                    self.unknown_head(word, st.head_span);
                    continue;
                }
            };
            if let Some(first) = singles.get(key) {
                let (line, _) = source.line_col(first.span.start);
                self.error(
                    Diagnostic::new(format!("duplicate `{key}` statement"), st.head_span, "second one here")
                        .note(format!("the first `{key}` is on line {line}; each of model, compile, fit and data may appear once")),
                );
                continue;
            }
            singles.insert(key, st);
            if key == "model" {
                if idx != 0 {
                    self.error(
                        Diagnostic::new(
                            "`model` must be the first statement",
                            st.head_span,
                            "not first",
                        )
                        .help("move `model NAME` to the top of the file"),
                    );
                }
                name = self.model_name(st);
            }
        }

        let compile = singles.get("compile").and_then(|st| self.compile(st));
        let fit = singles.get("fit").and_then(|st| self.fit(st));
        let data = singles.get("data").and_then(|st| self.data(st));
        if let (Some(f), None) = (singles.get("fit"), singles.get("compile")) {
            self.error(
                Diagnostic::new(
                    "`fit` needs a `compile` statement",
                    f.head_span,
                    "training without a loss and optimizer",
                )
                .help("add a line such as `compile loss=mse optimizer=adam`"),
            );
        }

        if layers.is_empty() {
            if self.diags.is_empty() {
                let end = source.text.len();
                self.error(
                    Diagnostic::new(
                        "the model has no layers",
                        Span::new(end, end),
                        "expected at least one layer",
                    )
                    .help("add a layer such as `LSTM 32 input_dim=1 input_length=4`"),
                );
            }
            return None;
        }

        let fit_batch = fit.as_ref().and_then(|f| f.batch_size.map(|b| (b, f.span)));
        let (input, specs) = self.layers(&layers, fit_batch)?;
        let total: u128 = specs.iter().map(|l| l.param_count()).sum();
        if total > MAX_PARAMS {
            self.error(
                Diagnostic::new(
                    format!(
                        "the model has {} parameters ({} as float32), more than lstmc can hold",
                        group_thousands(total),
                        human_bytes(total * 4)
                    ),
                    layers.last().map_or(Span::default(), |(st, _)| st.span),
                    "too large",
                )
                .note(format!(
                    "lstmc accepts at most {} parameters",
                    group_thousands(MAX_PARAMS)
                )),
            );
        }
        Some(ModelSpec {
            name: name.unwrap_or_else(|| source.stem()),
            input,
            layers: specs,
            compile,
            fit,
            data,
            source: source.clone(),
        })
    }

    fn unknown_head(&mut self, word: &str, span: Span) {
        let mut d = Diagnostic::new(
            format!("unknown statement `{word}`"),
            span,
            "expected a layer (LSTM, GRU, SimpleRNN, Dense) or model, compile, fit, data",
        );
        if let Some(h) = did_you_mean(word, HEADS) {
            d = d.help(h);
        } else if word.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
            d = d.note("lstmc knows the layers LSTM, GRU, SimpleRNN and Dense");
        }
        self.error(d);
    }

    fn model_name(&mut self, st: &Statement) -> Option<String> {
        match st.args.as_slice() {
            [Arg::Option(o)] if o.value.is_none() => Some(o.name.clone()),
            [Arg::Positional(Value {
                kind: ValueKind::Str(s),
                ..
            })] if !s.is_empty() => Some(s.clone()),
            [] => {
                self.error(
                    Diagnostic::new(
                        "`model` needs a name",
                        st.head_span,
                        "expected a name after `model`",
                    )
                    .help("write `model NAME`, for example `model butterfly`"),
                );
                None
            }
            [_, extra, ..] => {
                self.error(
                    Diagnostic::new("`model` takes only a name", arg_span(extra), "unexpected")
                        .help("write `model NAME` on a line of its own"),
                );
                None
            }
            [other] => {
                self.error(
                    Diagnostic::new(
                        "`model` needs a name",
                        arg_span(other),
                        "expected a name such as `butterfly`",
                    )
                    .help("write `model NAME`, for example `model butterfly`"),
                );
                None
            }
        }
    }

    /// Checks every option of a statement against the table: known, allowed
    /// here, given once, of the right type.
    fn options<'a>(&mut self, st: &'a Statement, owner: Owners, what: &str) -> Opts<'a> {
        let mut given: HashMap<&'a str, (&'a OptionArg, Typed)> = HashMap::new();
        for arg in &st.args {
            let Arg::Option(o) = arg else { continue };
            let Some(spec) = options::lookup(&o.name).filter(|_| o.known) else {
                let mut d = Diagnostic::new(
                    format!("unknown option `{}` for {what}", o.name),
                    o.name_span,
                    format!("not an option of {what}"),
                );
                if let Some(h) = did_you_mean(&o.name, options::names_for(owner)) {
                    d = d.help(h);
                } else {
                    let all: Vec<&str> = options::names_for(owner).collect();
                    d = d.note(format!("{what} takes: {}", all.join(", ")));
                }
                self.error(d);
                continue;
            };
            if spec.owners & owner == 0 {
                self.error(
                    Diagnostic::new(
                        format!("`{}` is not an option of {what}", o.name),
                        o.name_span,
                        format!("not allowed on {what}"),
                    )
                    .note(format!(
                        "`{}` is an option of {}",
                        o.name,
                        describe_owners(spec.owners)
                    )),
                );
                continue;
            }
            if let Some((first, _)) = given.get(o.name.as_str()) {
                let _ = first;
                self.error(
                    Diagnostic::new(
                        format!("option `{}` given twice", o.name),
                        o.span,
                        "second time here",
                    )
                    .help("keep one of them"),
                );
                continue;
            }
            if let Some(v) = self.typed(o, spec.ty) {
                given.insert(o.name.as_str(), (o, v));
            }
        }
        Opts { given }
    }

    fn typed(&mut self, o: &OptionArg, ty: OptType) -> Option<Typed> {
        let name = &o.name;
        let Some(v) = &o.value else {
            if ty == OptType::Bool {
                return Some(Typed::Bool(true));
            }
            self.error(
                Diagnostic::new(
                    format!("option `{name}` needs a value"),
                    o.span,
                    format!("`{name}` takes {}", expect_text(ty)),
                )
                .help(format!("write `{name}=VALUE`")),
            );
            return None;
        };
        let bad = |cx: &mut Checker, why: String| {
            cx.error(Diagnostic::new(
                format!("invalid value for `{name}`: {why}"),
                v.span,
                format!("expected {}", expect_text(ty)),
            ));
            None
        };
        let number = match &v.kind {
            ValueKind::Int(i) => Some(*i as f64),
            ValueKind::Float(f) => Some(*f),
            _ => None,
        };
        match ty {
            OptType::Count | OptType::Natural => match v.kind {
                ValueKind::Int(i) => {
                    let min = if ty == OptType::Count { 1 } else { 0 };
                    if i < min {
                        return bad(
                            self,
                            format!("{} is {}", i, if i == 0 { "zero" } else { "negative" }),
                        );
                    }
                    if ty == OptType::Count && i > MAX_DIM {
                        self.error(too_large(name, i, v.span));
                        return None;
                    }
                    Some(Typed::Int(i))
                }
                _ => bad(self, format!("found {}", v.kind.describe())),
            },
            OptType::Bool => match &v.kind {
                ValueKind::Bool(b) => Some(Typed::Bool(*b)),
                ValueKind::Ident(s) => {
                    let mut d = Diagnostic::new(
                        format!("invalid value for `{name}`: found the name `{s}`"),
                        v.span,
                        "expected `true` or `false`",
                    );
                    if let Some(h) = did_you_mean(s, ["true", "false"]) {
                        d = d.help(h);
                    }
                    self.error(d);
                    None
                }
                _ => bad(self, format!("found {}", v.kind.describe())),
            },
            OptType::Fraction | OptType::Positive | OptType::NonNegative => match number {
                Some(f) => {
                    let ok = match ty {
                        OptType::Fraction => (0.0..1.0).contains(&f),
                        OptType::Positive => f > 0.0,
                        _ => f >= 0.0,
                    };
                    if ok {
                        Some(Typed::Num(f))
                    } else {
                        bad(self, format!("{f} is out of range"))
                    }
                }
                None => bad(self, format!("found {}", v.kind.describe())),
            },
            OptType::OneOf(names) => match &v.kind {
                ValueKind::Ident(s) if names.contains(&s.as_str()) => Some(Typed::Name(s.clone())),
                ValueKind::Ident(s) | ValueKind::Str(s) => {
                    let quoted = matches!(v.kind, ValueKind::Str(_));
                    let mut d = Diagnostic::new(
                        format!("unknown value `{s}` for `{name}`"),
                        v.span,
                        format!("expected {}", expect_text(ty)),
                    );
                    if quoted && names.contains(&s.as_str()) {
                        d = d.help(format!("write it without quotes: `{name}={s}`"));
                    } else if let Some(h) = did_you_mean(s, names.iter().copied()) {
                        d = d.help(h);
                    }
                    self.error(d);
                    None
                }
                _ => bad(self, format!("found {}", v.kind.describe())),
            },
            OptType::Str => match &v.kind {
                ValueKind::Str(s) if !s.is_empty() => Some(Typed::Str(s.clone())),
                ValueKind::Str(_) => bad(self, "the path is empty".to_string()),
                ValueKind::Ident(s) => {
                    self.error(
                        Diagnostic::new(
                            format!("`{name}` takes a quoted path"),
                            v.span,
                            "expected a \"string\"",
                        )
                        .help(format!("write `{name}=\"{s}\"`")),
                    );
                    None
                }
                _ => bad(self, format!("found {}", v.kind.describe())),
            },
        }
    }

    fn layers(
        &mut self,
        layers: &[(&Statement, LayerKind)],
        fit_batch: Option<(usize, Span)>,
    ) -> Option<(InputSpec, Vec<LayerSpec>)> {
        let mut specs = Vec::new();
        let mut input: Option<InputSpec> = None;
        let mut features = 0usize;
        let mut sequence = false;
        let mut counts: HashMap<LayerKind, usize> = HashMap::new();
        for (i, (st, kind)) in layers.iter().enumerate() {
            let kind = *kind;
            let owner = match kind {
                LayerKind::Lstm => options::LSTM,
                LayerKind::Gru => options::GRU,
                LayerKind::SimpleRnn => options::RNN,
                LayerKind::Dense => options::DENSE,
            };
            let errors_before = self.diags.len();
            let units = self.units(st, kind);
            let opts = self.options(st, owner, kind.name());
            if i == 0 {
                let Some(dim) = opts.int("input_dim") else {
                    // Said already, if the statement had errors (a misspelt or invalid input_dim).
                    if self.diags.len() == errors_before {
                        let example = if kind.is_recurrent() {
                            "input_dim=N input_length=T"
                        } else {
                            "input_dim=N"
                        };
                        self.error(
                            Diagnostic::new("the first layer needs an input shape", st.head_span, "no `input_dim` here")
                                .help(format!("add {example} (features per step, steps per sample) to the first layer")),
                        );
                    }
                    return None;
                };
                let time = opts.int("input_length");
                let mut batch = opts.int("batch_size");
                if let (Some(b), Some((fb, fspan))) = (batch, fit_batch) {
                    if b != fb {
                        self.error(
                            Diagnostic::new(
                                format!("`fit batch_size={fb}` contradicts the first layer's `batch_size={b}`"),
                                fspan,
                                "conflicting batch size",
                            )
                            .help("give the batch size in one place"),
                        );
                    }
                }
                batch = batch.or(fit_batch.map(|(b, _)| b));
                sequence = kind.is_recurrent() || time.is_some();
                features = dim;
                input = Some(InputSpec {
                    features: dim,
                    time,
                    batch,
                    sequence,
                });
            } else {
                for first_only in ["input_dim", "input_length", "batch_size"] {
                    if let Some(span) = opts.span(first_only) {
                        self.error(
                            Diagnostic::new(
                                format!("`{first_only}` is only allowed on the first layer"),
                                span,
                                format!("layer {} is not the first", i + 1),
                            )
                            .help(format!(
                                "remove it: layer {}'s input is the output of layer {}",
                                i + 1,
                                i
                            )),
                        );
                    }
                }
            }
            if kind.is_recurrent() && !sequence {
                let prev = &specs[i - 1];
                let prev: &LayerSpec = prev;
                self.error(
                    Diagnostic::new(
                        format!(
                            "{} expects a sequence (batch, time, features), but layer {} returns (batch, {})",
                            kind.name(),
                            i,
                            prev.units
                        ),
                        st.head_span,
                        "needs a 3-D input",
                    )
                    .help(if prev.kind.is_recurrent() {
                        format!("add return_sequences to layer {i}")
                    } else {
                        "give the model a sequence input (input_length on the first layer), or put recurrent layers first".to_string()
                    }),
                );
            }
            let activation = match opts.name("activation") {
                Some(a) => Activation::from_name(a).expect("table lists activations"),
                None if kind.is_recurrent() => Activation::Tanh,
                None => Activation::Linear,
            };
            if kind.is_recurrent() && activation == Activation::Softmax {
                self.error(
                    Diagnostic::new(
                        "`softmax` is not an activation for recurrent layers",
                        opts.span("activation")?,
                        "Dense only",
                    )
                    .help("put a `Dense N activation=softmax` layer after this one"),
                );
            }
            let recurrent_activation = opts
                .name("recurrent_activation")
                .map_or(Activation::Sigmoid, |a| {
                    Activation::from_name(a).expect("table lists activations")
                });
            if recurrent_activation == Activation::Softmax {
                self.error(Diagnostic::new(
                    "`softmax` is not a recurrent activation",
                    opts.span("recurrent_activation")?,
                    "expected sigmoid, hard_sigmoid, tanh, relu or linear",
                ));
            }
            let init = |n: &str, d: Initializer| {
                opts.name(n).map_or(d, |s| {
                    Initializer::from_name(s).expect("table lists initializers")
                })
            };
            let n = counts.entry(kind).or_insert(0);
            let name = if *n == 0 {
                kind.keras_stem().to_string()
            } else {
                format!("{}_{}", kind.keras_stem(), n)
            };
            *n += 1;
            let return_sequences = opts.flag("return_sequences").unwrap_or(false);
            let spec = LayerSpec {
                kind,
                name,
                units: units.unwrap_or(1),
                input_features: features,
                activation,
                recurrent_activation,
                use_bias: opts.flag("use_bias").unwrap_or(true),
                return_sequences,
                stateful: opts.flag("stateful").unwrap_or(false),
                go_backwards: opts.flag("go_backwards").unwrap_or(false),
                unit_forget_bias: opts.flag("unit_forget_bias").unwrap_or(true),
                reset_after: opts.flag("reset_after").unwrap_or(true),
                kernel_initializer: init("kernel_initializer", Initializer::GlorotUniform),
                recurrent_initializer: init("recurrent_initializer", Initializer::Orthogonal),
                bias_initializer: init("bias_initializer", Initializer::Zeros),
                dropout: opts.num("dropout").unwrap_or(0.0),
                recurrent_dropout: opts.num("recurrent_dropout").unwrap_or(0.0),
                span: st.span,
            };
            if kind.is_recurrent() {
                sequence = return_sequences;
            }
            features = spec.units;
            specs.push(spec);
        }
        let input = input?;
        if self.diags.is_empty() {
            Some((input, specs))
        } else {
            None
        }
    }

    fn units(&mut self, st: &Statement, kind: LayerKind) -> Option<usize> {
        let mut positionals = st.args.iter().enumerate().filter_map(|(i, a)| match a {
            Arg::Positional(v) => Some((i, v)),
            Arg::Option(_) => None,
        });
        let Some((pos, v)) = positionals.next() else {
            self.error(
                Diagnostic::new(
                    format!("{} needs its number of units", kind.name()),
                    st.head_span,
                    "expected units after the layer kind",
                )
                .help(format!(
                    "write `{} 32 ...`: the units come first",
                    kind.name()
                )),
            );
            return None;
        };
        if let Some((_, extra)) = positionals.next() {
            self.error(
                Diagnostic::new(
                    format!("{} takes one positional value, its units", kind.name()),
                    extra.span,
                    "unexpected value",
                )
                .help("write other settings as `name=value`"),
            );
        }
        if pos != 0 {
            self.error(
                Diagnostic::new(
                    "the units must come right after the layer kind",
                    v.span,
                    "after options",
                )
                .help(format!(
                    "write `{} {} ...`",
                    kind.name(),
                    v.span_text_hint()
                )),
            );
        }
        match v.kind {
            ValueKind::Int(i) if (1..=MAX_DIM).contains(&i) => Some(i as usize),
            ValueKind::Int(i) if i > MAX_DIM => {
                self.error(too_large("units", i, v.span));
                None
            }
            ValueKind::Int(i) => {
                self.error(Diagnostic::new(
                    format!("{} units must be positive, found {i}", kind.name()),
                    v.span,
                    "expected a whole number >= 1",
                ));
                None
            }
            _ => {
                self.error(Diagnostic::new(
                    format!(
                        "{} units must be a whole number, found {}",
                        kind.name(),
                        v.kind.describe()
                    ),
                    v.span,
                    "expected a whole number >= 1",
                ));
                None
            }
        }
    }

    fn no_positionals(&mut self, st: &Statement, what: &str) {
        for a in &st.args {
            if let Arg::Positional(v) = a {
                self.error(
                    Diagnostic::new(
                        format!("`{what}` takes only options"),
                        v.span,
                        "unexpected value",
                    )
                    .help("write settings as `name=value`"),
                );
            }
        }
    }

    fn compile(&mut self, st: &Statement) -> Option<CompileSpec> {
        self.no_positionals(st, "compile");
        let opts = self.options(st, options::COMPILE, "`compile`");
        let loss = Loss::from_name(opts.name("loss").unwrap_or("mse")).expect("table lists losses");
        let opt_name = opts.name("optimizer").unwrap_or("rmsprop");
        let allowed: &[&str] = match opt_name {
            "sgd" => &["momentum", "nesterov"],
            "adam" => &["beta_1", "beta_2", "epsilon"],
            _ => &["rho", "momentum", "epsilon"],
        };
        for hp in ["momentum", "nesterov", "beta_1", "beta_2", "epsilon", "rho"] {
            if let Some(span) = opts.span(hp) {
                if !allowed.contains(&hp) {
                    let owners: Vec<&str> = [
                        ("sgd", "momentum nesterov"),
                        ("adam", "beta_1 beta_2 epsilon"),
                        ("rmsprop", "rho momentum epsilon"),
                    ]
                    .iter()
                    .filter(|(_, hps)| hps.split(' ').any(|h| h == hp))
                    .map(|&(o, _)| o)
                    .collect();
                    self.error(
                        Diagnostic::new(
                            format!("`{hp}` is not a setting of the {opt_name} optimizer"),
                            span,
                            "not used by this optimizer",
                        )
                        .note(format!("`{hp}` belongs to {}", owners.join(" and ")))
                        .help(format!(
                            "{opt_name} takes: learning_rate, {}",
                            allowed.join(", ")
                        )),
                    );
                }
            }
        }
        // Keras 3's defaults, then what the statement sets.
        let mut optimizer = Optimizer::keras_default(opt_name).expect("table lists optimizers");
        if let Some(lr) = opts.num("learning_rate") {
            optimizer = optimizer.with_learning_rate(lr);
        }
        let set = |name: &str, v: &mut f64| {
            if let Some(x) = opts.num(name) {
                *v = x;
            }
        };
        match &mut optimizer {
            Optimizer::Sgd {
                momentum, nesterov, ..
            } => {
                set("momentum", momentum);
                *nesterov = opts.flag("nesterov").unwrap_or(false);
            }
            Optimizer::Adam {
                beta_1,
                beta_2,
                epsilon,
                ..
            } => {
                set("beta_1", beta_1);
                set("beta_2", beta_2);
                set("epsilon", epsilon);
            }
            Optimizer::Rmsprop {
                rho,
                momentum,
                epsilon,
                ..
            } => {
                set("rho", rho);
                set("momentum", momentum);
                set("epsilon", epsilon);
            }
        }
        let metrics = match opts.name("metrics") {
            Some("accuracy") => vec![Metric::Accuracy],
            Some("mae") => vec![Metric::Mae],
            Some("mse") => vec![Metric::Mse],
            _ => vec![],
        };
        Some(CompileSpec {
            loss,
            optimizer,
            metrics,
            span: st.span,
        })
    }

    fn fit(&mut self, st: &Statement) -> Option<FitSpec> {
        self.no_positionals(st, "fit");
        let opts = self.options(st, options::FIT, "`fit`");
        Some(FitSpec {
            epochs: opts.int("epochs").unwrap_or(1),
            batch_size: opts.int("batch_size"),
            shuffle: opts.flag("shuffle"),
            reset_states: if opts.name("reset_states") == Some("never") {
                ResetStates::Never
            } else {
                ResetStates::Epoch
            },
            validation_split: opts.num("validation_split").unwrap_or(0.0),
            seed: opts.int("seed").map(|s| s as u64),
            span: st.span,
        })
    }

    fn data(&mut self, st: &Statement) -> Option<DataSpec> {
        self.no_positionals(st, "data");
        let opts = self.options(st, options::DATA, "`data`");
        let sources: Vec<&str> = ["builtin", "x", "csv"]
            .into_iter()
            .filter(|s| opts.has(s))
            .collect();
        if sources.len() > 1 {
            self.error(
                Diagnostic::new(
                    format!(
                        "`data` names two sources: `{}` and `{}`",
                        sources[0], sources[1]
                    ),
                    opts.span(sources[1])?,
                    "second source",
                )
                .help("use one of builtin=, x= (with y=), csv="),
            );
            return None;
        }
        let reject = |cx: &mut Checker, name: &str, source: &str| {
            if let Some(span) = opts.span(name) {
                cx.error(Diagnostic::new(
                    format!("`{name}` does not apply to `{source}` data"),
                    span,
                    "not used here",
                ));
            }
        };
        let source = match sources.first() {
            Some(&"builtin") => {
                reject(self, "y", "builtin");
                reject(self, "header", "builtin");
                let features = opts.int("features").unwrap_or(1);
                if !(1..=2).contains(&features) {
                    self.error(
                        Diagnostic::new(
                            format!("the butterfly song has 1 or 2 features, not {features}"),
                            opts.span("features")?,
                            "expected 1 or 2",
                        )
                        .note("features=1: the note index / 13; features=2: [scale / 6, length]"),
                    );
                }
                DataSource::Builtin {
                    name: opts.name("builtin")?.to_string(),
                    window: opts.int("window").unwrap_or(4),
                    features,
                }
            }
            Some(&"x") => {
                reject(self, "window", "x=");
                reject(self, "features", "x=");
                reject(self, "header", "x=");
                DataSource::Npy {
                    x: opts.string("x")?,
                    y: opts.string("y"),
                }
            }
            Some(_) => {
                reject(self, "y", "csv");
                reject(self, "features", "csv");
                DataSource::Csv {
                    path: opts.string("csv")?,
                    window: opts.int("window"),
                    header: opts.flag("header").unwrap_or(false),
                }
            }
            None => {
                if let Some(span) = opts.span("y") {
                    self.error(
                        Diagnostic::new("`y=` without `x=`", span, "targets without inputs")
                            .help("add x=\"inputs.npy\""),
                    );
                    return None;
                }
                if opts.has("predict") {
                    DataSource::Npy {
                        x: String::new(),
                        y: None,
                    }
                } else {
                    self.error(
                        Diagnostic::new(
                            "`data` names no source",
                            st.head_span,
                            "expected builtin=, x= or csv=",
                        )
                        .help("for example `data builtin=butterfly window=4 features=1`"),
                    );
                    return None;
                }
            }
        };
        Some(DataSpec {
            source,
            predict: opts.string("predict"),
            span: st.span,
        })
    }
}

trait SpanHint {
    fn span_text_hint(&self) -> String;
}

impl SpanHint for Value {
    fn span_text_hint(&self) -> String {
        match &self.kind {
            ValueKind::Int(i) => i.to_string(),
            _ => "UNITS".to_string(),
        }
    }
}

fn arg_span(a: &Arg) -> Span {
    match a {
        Arg::Positional(v) => v.span,
        Arg::Option(o) => o.span,
    }
}

fn too_large(name: &str, value: i64, span: Span) -> Diagnostic {
    Diagnostic::new(
        format!("`{name}` = {value} is beyond what lstmc can hold"),
        span,
        format!("at most {}", group_thousands(MAX_DIM as u128)),
    )
    .note(format!(
        "sizes are limited to {} per axis so that every buffer fits in memory",
        group_thousands(MAX_DIM as u128)
    ))
}

fn expect_text(ty: OptType) -> String {
    match ty {
        OptType::Count => "a whole number >= 1".into(),
        OptType::Natural => "a whole number >= 0".into(),
        OptType::Bool => "`true` or `false`".into(),
        OptType::Fraction => "a number in [0, 1)".into(),
        OptType::Positive => "a number > 0".into(),
        OptType::NonNegative => "a number >= 0".into(),
        OptType::OneOf(names) => format!("one of {}", names.join(", ")),
        OptType::Str => "a quoted path".into(),
    }
}
