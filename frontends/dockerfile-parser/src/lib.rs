//! Dockerfile text → AST, diagnostics and typed instructions, with BuildKit's semantics.
//!
//! Three layers, each usable on its own:
//! - [`parse`] / [`dump`]: the low-level parser of BuildKit's `frontend/dockerfile/parser`
//!   (directives, line continuation, comments, flags, per-instruction argument splitting,
//!   heredocs). No variable expansion and no validation beyond what BuildKit's parser does.
//! - [`shell`]: the word expander of BuildKit's `frontend/dockerfile/shell` (`$VAR`, `${VAR:-w}`,
//!   `${VAR#p}`, quotes, escapes, word splitting).
//! - [`instructions`]: parsed nodes → typed [`instructions::Instruction`] values, with flag
//!   validation like BuildKit's `bflag`. Unknown keywords are kept, not rejected, so that the
//!   frontend can hand them to instruction plugins.
//!
//! Architecture invariant: this crate depends on no kiln crate (only small third-party crates),
//! does no I/O, and never panics on any input text.

mod dump;
pub mod instructions;
mod parser;
pub mod shell;
pub mod suggest;

pub use dump::{dump, go_quote};
pub use parser::{
    parse, parse_with_escape, Directive, Heredoc, Node, Parsed, Warning, MAX_DOCKERFILE_BYTES,
    MAX_HEREDOC_BYTES, MAX_INSTRUCTIONS, MAX_LINE_BYTES, MAX_ONBUILD_NESTING,
};

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The Dockerfile text could not be parsed.
    #[error("dockerfile parse error on line {line}: {message}{}", show_line(.text))]
    Parse {
        /// 1-based line where the offending instruction (or directive) starts.
        line: usize,
        /// That physical line, without its line ending.
        text: String,
        message: String,
    },
    /// A word could not be expanded (bad substitution, unterminated quote, `${V:?}`…).
    #[error("failed to process {}: {message}", go_quote(&shorten(.word)))]
    Expand { word: String, message: String },
    /// The whole input is over one of this crate's size limits (see [`MAX_DOCKERFILE_BYTES`]).
    #[error("{message}")]
    TooLarge { message: String },
    /// An instruction is malformed (bad flag, wrong argument count…).
    #[error("dockerfile parse error on line {line}: {message}{}", show_line(.text))]
    Instruction {
        /// 1-based first line of the instruction.
        line: usize,
        /// The instruction's first physical line, without its line ending.
        text: String,
        message: String,
    },
}

impl Error {
    /// The message without location, as BuildKit words it (e.g. `ENV must have two arguments`).
    pub fn message(&self) -> &str {
        match self {
            Error::Parse { message, .. }
            | Error::Expand { message, .. }
            | Error::Instruction { message, .. }
            | Error::TooLarge { message } => message,
        }
    }

    /// The 1-based line the error points at, if it has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Error::Parse { line, .. } | Error::Instruction { line, .. } => Some(*line),
            Error::Expand { .. } | Error::TooLarge { .. } => None,
        }
    }
}

fn show_line(text: &str) -> String {
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(" (in `{}`)", shorten(text.trim_end()))
    }
}

/// Characters of a line or word quoted in an error message: enough to recognise it, while a
/// 1 MiB line does not make a 1 MiB message.
pub const MAX_QUOTED_CHARS: usize = 120;

/// Characters of an error or warning message. Messages quote words and values of the input
/// (`can't find = in "…"`); cutting here keeps every one of them short, whatever it quotes.
pub const MAX_MESSAGE_CHARS: usize = 4 * MAX_QUOTED_CHARS;

/// `text` cut to [`MAX_QUOTED_CHARS`] characters, with `…` when something was cut.
pub fn shorten(text: &str) -> std::borrow::Cow<'_, str> {
    shorten_to(text, MAX_QUOTED_CHARS)
}

/// A message cut to [`MAX_MESSAGE_CHARS`] characters.
pub fn short_message(message: String) -> String {
    match shorten_to(&message, MAX_MESSAGE_CHARS) {
        std::borrow::Cow::Borrowed(_) => message,
        std::borrow::Cow::Owned(cut) => cut,
    }
}

fn shorten_to(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..end])),
    }
}
