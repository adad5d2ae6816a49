//! The spec frontend's error, before it is given the build file's name and turned into the
//! [`PluginError`] that crosses the plugin boundary.

use kiln_plugin_sdk::proto::{ErrorKind, Location, PluginError};

/// What went wrong, and at which line of the build file when it is about one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The build file is wrong (or asks for something this frontend does not do).
    #[error("{message}")]
    Input {
        /// What is wrong and what to do, without the location.
        message: String,
        /// 1-based line in the build file.
        line: Option<u32>,
        /// [`ErrorKind::InvalidInput`] or [`ErrorKind::Unsupported`].
        kind: ErrorKind,
    },
    /// A host callback failed; its kind is kept, a line added when it has none.
    #[error("{}", .error.message)]
    Host {
        /// What the host said.
        error: PluginError,
        /// The line whose value made the call.
        line: Option<u32>,
    },
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A wrong build file at `line`.
    pub(crate) fn at(line: u32, message: impl Into<String>) -> Self {
        Error::Input {
            message: message.into(),
            line: Some(line),
            kind: ErrorKind::InvalidInput,
        }
    }

    /// A wrong request, not about a line (`--target`, an option).
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::Input {
            message: message.into(),
            line: None,
            kind: ErrorKind::InvalidInput,
        }
    }

    /// Something valid that this frontend does not implement.
    pub(crate) fn unsupported(line: Option<u32>, message: impl Into<String>) -> Self {
        Error::Input {
            message: message.into(),
            line,
            kind: ErrorKind::Unsupported,
        }
    }

    /// The same error located at `line`, unless it already has a line.
    pub(crate) fn or_at(self, at: u32) -> Self {
        match self {
            Error::Input {
                message,
                line,
                kind,
            } => Error::Input {
                message,
                line: line.or(Some(at)),
                kind,
            },
            Error::Host { error, line } => Error::Host {
                error,
                line: line.or(Some(at)),
            },
        }
    }

    /// The boundary error: located in `file`, the offending line quoted so that the user sees
    /// which value failed even without the file at hand.
    pub(crate) fn into_plugin_error(self, file: &str, source: &str) -> PluginError {
        let located = |line: u32| Location {
            file: file.to_owned(),
            line,
        };
        let quote = |message: String, line: u32| match line_text(source, line) {
            Some(text) => format!("{message} (in `{}`)", shorten(text)),
            None => message,
        };
        match self {
            Error::Input {
                message,
                line: Some(l),
                kind,
            } => PluginError {
                message: quote(message, l),
                location: Some(located(l)),
                kind,
            },
            Error::Input {
                message,
                line: None,
                kind,
            } => PluginError::new(kind, message),
            Error::Host { mut error, line } => {
                if let (None, Some(l)) = (&error.location, line) {
                    error.message = quote(error.message, l);
                    error.location = Some(located(l));
                }
                error
            }
        }
    }
}

impl From<PluginError> for Error {
    fn from(error: PluginError) -> Self {
        Error::Host { error, line: None }
    }
}

/// The trimmed text of 1-based `line` of `source`, when it has any.
fn line_text(source: &str, line: u32) -> Option<&str> {
    let index = usize::try_from(line).ok()?.checked_sub(1)?;
    let text = source.lines().nth(index)?.trim();
    (!text.is_empty()).then_some(text)
}

/// At most 80 characters of `text`, `...` marking a cut.
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        return text.to_owned();
    }
    let cut: String = text.chars().take(MAX - 3).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn located_errors_quote_their_line() {
        let src = "[stage.a]\nfrom = 1\n";
        let e = Error::at(2, "`from` must be a string").into_plugin_error("build.toml", src);
        assert_eq!(
            e.to_string(),
            "build.toml:2: `from` must be a string (in `from = 1`)"
        );
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        let e = Error::from(PluginError::not_found("no such image"))
            .or_at(1)
            .into_plugin_error("build.toml", src);
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "build.toml:1: no such image (in `[stage.a]`)"
        );
        let long = "x".repeat(100);
        assert_eq!(shorten(&long).chars().count(), 80);
    }
}
