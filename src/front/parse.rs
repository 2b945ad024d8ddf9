//! Parsing: bytes → UTF-8 check → pest parse tree → spanned [`Ast`].
//!
//! Lexical problems that pest would only report as "expected ..." (an
//! unterminated string, a bad escape, an integer too large) are parsed
//! loosely by the grammar and reported here with a precise message.

use super::ast::{Arg, Ast, Head, OptionArg, Statement, Value, ValueKind};
use super::diag::{Diagnostic, Diagnostics};
use super::source::{SourceFile, Span};
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/model.pest"]
struct ModelParser;

/// Makes a [`SourceFile`] from raw bytes; invalid UTF-8 is an error located
/// at the first bad byte (the source keeps a lossy copy so the line can be shown).
pub fn decode(name: &str, bytes: &[u8]) -> Result<SourceFile, Diagnostics> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile::new(name, text)),
        Err(e) => {
            let at = e.valid_up_to();
            let bad = &bytes[at..at
                + e.error_len()
                    .unwrap_or(bytes.len() - at)
                    .max(1)
                    .min(bytes.len() - at)];
            let hex: Vec<String> = bad.iter().map(|b| format!("0x{b:02x}")).collect();
            let source = SourceFile::new(name, String::from_utf8_lossy(bytes).into_owned());
            // U+FFFD takes 3 bytes in the lossy copy: point at it.
            let diag = Diagnostic::new(
                format!("this file is not valid UTF-8 (byte {} here)", hex.join(" ")),
                Span::new(at, at + 3),
                "invalid UTF-8",
            )
            .help("save the file as UTF-8 text");
            Err(Diagnostics {
                source,
                items: vec![diag],
            })
        }
    }
}

/// Parses a source file into its syntax tree, or the syntax errors found.
pub fn parse(source: &SourceFile) -> Result<Ast, Vec<Diagnostic>> {
    let pairs =
        ModelParser::parse(Rule::file, &source.text).map_err(|e| vec![syntax_error(source, e)])?;
    let mut diags = Vec::new();
    let mut ast = Ast::default();
    for file in pairs {
        for stmt in file.into_inner() {
            if stmt.as_rule() == Rule::statement {
                ast.statements.push(statement(stmt, &mut diags));
            }
        }
    }
    if diags.is_empty() {
        Ok(ast)
    } else {
        Err(diags)
    }
}

fn statement(pair: Pair<'_, Rule>, diags: &mut Vec<Diagnostic>) -> Statement {
    let span = Span::from(pair.as_span());
    let inner = pair
        .into_inner()
        .next()
        .expect("statement has one alternative");
    let mut parts = inner.into_inner();
    let head_pair = parts.next().expect("statement starts with its head");
    let head_span = Span::from(head_pair.as_span());
    let word = head_pair.as_str().to_string();
    let head = match head_pair.as_rule() {
        Rule::kw_model => Head::Model,
        Rule::kw_compile => Head::Compile,
        Rule::kw_fit => Head::Fit,
        Rule::kw_data => Head::Data,
        Rule::layer_kind => Head::Layer(word),
        _ => Head::Unknown(word),
    };
    let args = parts.filter_map(|p| arg(p, diags)).collect();
    Statement {
        head,
        head_span,
        args,
        span,
    }
}

fn arg(pair: Pair<'_, Rule>, diags: &mut Vec<Diagnostic>) -> Option<Arg> {
    match pair.as_rule() {
        Rule::positional => {
            let v = value(pair.into_inner().next()?, diags)?;
            Some(Arg::Positional(v))
        }
        Rule::option => {
            let span = Span::from(pair.as_span());
            let mut it = pair.into_inner();
            let name_pair = it.next()?;
            let name_span = Span::from(name_pair.as_span());
            let known = name_pair.clone().into_inner().next()?.as_rule() == Rule::known_option;
            let name = name_pair.as_str().to_string();
            let value = match it.next() {
                Some(v) => Some(value(v.into_inner().next()?, diags)?),
                None => None,
            };
            Some(Arg::Option(OptionArg {
                name,
                known,
                name_span,
                value,
                span,
            }))
        }
        _ => None,
    }
}

fn value(pair: Pair<'_, Rule>, diags: &mut Vec<Diagnostic>) -> Option<Value> {
    let span = Span::from(pair.as_span());
    let text = pair.as_str();
    let kind = match pair.as_rule() {
        Rule::number => number(text, span, diags)?,
        Rule::boolean => ValueKind::Bool(text == "true"),
        Rule::ident => ValueKind::Ident(text.to_string()),
        Rule::string => ValueKind::Str(unescape(text, span.start, diags)?),
        Rule::unterminated_string => {
            diags.push(
                Diagnostic::new(
                    "unterminated string",
                    span,
                    "this string has no closing `\"`",
                )
                .help("close the string with `\"` on the same line"),
            );
            return None;
        }
        _ => return None,
    };
    Some(Value { kind, span })
}

fn number(text: &str, span: Span, diags: &mut Vec<Diagnostic>) -> Option<ValueKind> {
    let is_float = text.contains(['.', 'e', 'E']);
    if !is_float {
        return match text.parse::<i64>() {
            Ok(i) => Some(ValueKind::Int(i)),
            Err(_) => {
                diags.push(Diagnostic::new(
                    format!("integer `{text}` is too large"),
                    span,
                    "does not fit in 64 bits",
                ));
                None
            }
        };
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Some(ValueKind::Float(f)),
        _ => {
            diags.push(Diagnostic::new(
                format!("number `{text}` is out of range"),
                span,
                "not a finite number",
            ));
            None
        }
    }
}

/// Resolves `\"` and `\\`; any other escape is an error at its position.
fn unescape(quoted: &str, offset: usize, diags: &mut Vec<Diagnostic>) -> Option<String> {
    let inner = &quoted[1..quoted.len() - 1];
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.char_indices();
    let mut ok = true;
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some((_, e @ ('"' | '\\'))) => out.push(e),
            Some((j, e)) => {
                let start = offset + 1 + i;
                diags.push(
                    Diagnostic::new(
                        format!("unknown escape `\\{e}` in string"),
                        Span::new(start, offset + 1 + j + e.len_utf8()),
                        "not a valid escape",
                    )
                    .help("the only escapes are `\\\"` and `\\\\`"),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Turns a pest error into a diagnostic that names the offending token and
/// says, in the language's own terms, what could have stood there.
fn syntax_error(source: &SourceFile, e: pest::error::Error<Rule>) -> Diagnostic {
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let rest = &source.text[pos.min(source.text.len())..];
    let token_len = token_at(rest);
    let found = if rest.is_empty() {
        "end of file".to_string()
    } else if rest.starts_with(['\n', '\r']) {
        "end of line".to_string()
    } else {
        format!("`{}`", &rest[..token_len])
    };
    let mut expected: Vec<&str> = Vec::new();
    if let ErrorVariant::ParsingError { positives, .. } = &e.variant {
        for r in positives {
            let name = describe(*r);
            if !expected.contains(&name) {
                expected.push(name);
            }
        }
    }
    // pest does not list the built-in NEWLINE; where the file goes on, the
    // statement could also have ended at the end of the line.
    if !rest.is_empty() {
        for e in expected.iter_mut() {
            if *e == "the end of the file" {
                *e = "the end of the line";
            }
        }
    }
    let rank = |e: &&str| {
        [
            "a statement",
            "an option",
            "a value",
            "a string",
            "the end of the line",
            "the end of the file",
        ]
        .iter()
        .position(|x| x == e)
    };
    expected.sort_by_key(rank);
    let label = if expected.is_empty() {
        "unexpected here".to_string()
    } else {
        format!("expected {}", join_or(&expected))
    };
    let mut diag = Diagnostic::new(
        format!("unexpected {found}"),
        Span::new(pos, pos + token_len.max(1)),
        label,
    );
    let after_word = source.text[..pos].ends_with(|c: char| c.is_alphanumeric() || c == '_');
    if rest.starts_with(['.', '/']) && after_word {
        diag = diag.help(
            "a path, or other text with `.` or `/`, is written in double quotes: x=\"train.npy\"",
        );
    } else if rest.starts_with('\\') {
        diag = diag.help("a `\\` continues a line only as the last character of the line");
    } else if rest.starts_with('=') {
        diag = diag.help("an option is written `name=value`, with a name before `=`");
    } else if let Some(help) = list_help(&source.text[..pos], rest) {
        diag = diag.help(help);
    } else if rest.starts_with(['(', ')', ',', '[', ']']) {
        diag = diag.help(
            "write options as `name=value` separated by spaces, not Keras's `(...)` call syntax",
        );
    }
    diag
}

/// The help for a Keras list where a value goes (`metrics=['accuracy']`), or a second
/// metric after a comma (`metrics=accuracy,mae`); other commas get the call-syntax help.
/// `before` is the text up to the unexpected character, `rest` the text from it.
fn list_help(before: &str, rest: &str) -> Option<&'static str> {
    let option = before
        .rsplit(|c: char| c.is_whitespace())
        .next()
        .and_then(|word| word.split_once('='))
        .map(|(name, _)| name)?;
    let list = rest.starts_with('[') && before.ends_with('=');
    let second_metric = rest.starts_with(',') && option == "metrics";
    if !(list || second_metric) {
        return None;
    }
    Some(if option == "metrics" {
        "`metrics=` names one metric, without Keras's list: metrics=accuracy (or mae, mse)"
    } else if option.ends_with("shape") {
        "a value is one word, number or quoted string, not a Keras list; a shape is written \
         input_length=T input_dim=F, and batch_size=B for Keras's batch_input_shape"
    } else {
        "a value is one word, number or quoted string, not a Keras list"
    })
}

fn token_at(rest: &str) -> usize {
    let mut len = 0;
    for c in rest.chars() {
        if c.is_whitespace() || (len > 0 && !(c.is_alphanumeric() || c == '_')) {
            break;
        }
        len += c.len_utf8();
        if !(c.is_alphanumeric() || c == '_') {
            break;
        }
    }
    len
}

fn describe(rule: Rule) -> &'static str {
    match rule {
        Rule::statement
        | Rule::model_stmt
        | Rule::layer_stmt
        | Rule::compile_stmt
        | Rule::fit_stmt
        | Rule::data_stmt
        | Rule::unknown_stmt
        | Rule::kw_model
        | Rule::kw_compile
        | Rule::kw_fit
        | Rule::kw_data
        | Rule::layer_kind
        | Rule::unknown_head => "a statement",
        Rule::option | Rule::option_name | Rule::known_option | Rule::unknown_option => "an option",
        Rule::positional | Rule::value | Rule::number | Rule::boolean | Rule::ident => "a value",
        Rule::string | Rule::string_inner | Rule::escape | Rule::unterminated_string => "a string",
        Rule::EOI => "the end of the file",
        _ => "a statement",
    }
}

fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}
