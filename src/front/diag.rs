//! Diagnostics: what went wrong, where, what was expected, and a suggestion.
//!
//! The library produces [`Diagnostic`]s as plain data; they are rendered with
//! source snippets only at the edge (the CLI, or a host that asks for text),
//! with codespan-reporting in its ASCII style so that the text is stable and
//! can be compared in tests:
//!
//! ```text
//! error: unknown option `retrun_sequences` for LSTM
//!   --> bad.model:1:8
//!   |
//! 1 | LSTM 3 retrun_sequences
//!   |        ^^^^^^^^^^^^^^^^ not an option of LSTM
//!   |
//!   = help: did you mean `return_sequences`?
//! ```

use super::source::{SourceFile, Span};
use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Chars, Config};
use std::fmt;

/// One error about a `.model` file, located by a byte span.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// The headline ("unknown option `x` for LSTM").
    pub message: String,
    /// Where.
    pub span: Span,
    /// The text under the caret: what was expected there.
    pub label: String,
    /// Extra lines: suggestions (`help: ...`) and explanations (`note: ...`).
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// A diagnostic with a headline, a location and a label.
    pub fn new(message: impl Into<String>, span: Span, label: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            span,
            label: label.into(),
            notes: Vec::new(),
        }
    }

    /// Adds a `help:` line.
    pub fn help(mut self, text: impl Into<String>) -> Diagnostic {
        self.notes.push(format!("help: {}", text.into()));
        self
    }

    /// Adds a `note:` line.
    pub fn note(mut self, text: impl Into<String>) -> Diagnostic {
        self.notes.push(format!("note: {}", text.into()));
        self
    }

    /// Renders the diagnostic with the offending line and a caret, as plain text.
    pub fn render(&self, source: &SourceFile) -> String {
        let file = SimpleFile::new(source.name.as_str(), source.text.as_str());
        let start = self.span.start.min(source.text.len());
        let end = self.span.end.clamp(start, source.text.len());
        let cs = CsDiagnostic::error()
            .with_message(&self.message)
            .with_labels(vec![
                Label::primary((), start..end).with_message(&self.label)
            ])
            .with_notes(self.notes.clone());
        let config = Config {
            chars: Chars::ascii(),
            ..Config::default()
        };
        match term::emit_into_string(&config, &file, &cs) {
            Ok(text) => text,
            // Rendering can only fail on a span outside the text, excluded above.
            Err(_) => {
                let (line, col) = source.line_col(start);
                format!(
                    "error: {}\n  --> {}:{}:{}\n",
                    self.message, source.name, line, col
                )
            }
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Several diagnostics about one source file: the error type of the front end.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    /// The file they are about.
    pub source: SourceFile,
    /// The errors, in source order.
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Renders every diagnostic, one after another.
    pub fn render(&self) -> String {
        self.items
            .iter()
            .map(|d| d.render(&self.source))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for Diagnostics {}

/// The closest of `candidates` to `word`, if it is close enough to be a likely misspelling.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|&(d, c)| d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// `help: did you mean ...?` for a misspelt name, if some candidate is close.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}
