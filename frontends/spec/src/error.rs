//! The spec frontend's error, before it is given the build file's name and turned into the
//! [`PluginError`] that crosses the plugin boundary.

use kiln_plugin_sdk::build_file;
use kiln_plugin_sdk::proto::{ErrorKind, PluginError};

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

    /// The boundary error, located at its line of `file` (whose text is `source`) with the line
    /// quoted ([`build_file::locate`]).
    pub(crate) fn into_plugin_error(self, file: &str, source: &str) -> PluginError {
        let (error, line) = match self {
            Error::Input {
                message,
                line,
                kind,
            } => (PluginError::new(kind, message), line),
            Error::Host { error, line } => (error, line),
        };
        match line {
            Some(l) => build_file::locate(error, file, source, l),
            None => error,
        }
    }
}

impl From<PluginError> for Error {
    fn from(error: PluginError) -> Self {
        Error::Host { error, line: None }
    }
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
    }
}
