//! The conversion's error, before it is given the build file's name and turned into the
//! [`PluginError`] that crosses the plugin boundary.

use kiln_plugin_sdk::build_file;
use kiln_plugin_sdk::proto::{ErrorKind, PluginError};

/// What went wrong, and at which line when it is about one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The Dockerfile is wrong (or asks for something not supported yet).
    #[error("{message}")]
    Input {
        /// BuildKit-like message, without location.
        message: String,
        /// 1-based line of the instruction.
        line: Option<usize>,
        /// [`ErrorKind::InvalidInput`] or [`ErrorKind::Unsupported`].
        kind: ErrorKind,
    },
    /// A host callback failed; its kind is kept, a line added when it has none.
    #[error("{}", .error.message)]
    Host {
        /// What the host said.
        error: PluginError,
        /// The instruction that made the call.
        line: Option<usize>,
    },
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A wrong Dockerfile, location filled in later with [`Error::at`].
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::Input {
            message: message.into(),
            line: None,
            kind: ErrorKind::InvalidInput,
        }
    }

    /// A valid Dockerfile using something this frontend does not implement yet.
    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        Error::Input {
            message: message.into(),
            line: None,
            kind: ErrorKind::Unsupported,
        }
    }

    /// The same error located at `line`, unless it already has a line.
    pub(crate) fn at(self, at: usize) -> Self {
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

    /// The same error, reported at `line` (even when it had another line) and naming the ONBUILD
    /// `trigger` that caused it: a trigger comes from the base image, not from this file, so
    /// its own line numbers mean nothing to the user, and BuildKit points at the FROM.
    pub(crate) fn in_trigger(self, trigger: &str, line: usize) -> Self {
        let prefix = format!("ONBUILD trigger {trigger:?} of the base failed: ");
        match self {
            Error::Input { message, kind, .. } => Error::Input {
                message: format!("{prefix}{message}"),
                line: Some(line),
                kind,
            },
            Error::Host { mut error, .. } => {
                error.message = format!("{prefix}{}", error.message);
                error.location = None;
                Error::Host {
                    error,
                    line: Some(line),
                }
            }
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
            Some(l) => {
                build_file::locate(error, file, source, u32::try_from(l).unwrap_or(u32::MAX))
            }
            None => error,
        }
    }
}

impl From<PluginError> for Error {
    fn from(error: PluginError) -> Self {
        Error::Host { error, line: None }
    }
}

impl From<dockerfile_parser::Error> for Error {
    fn from(e: dockerfile_parser::Error) -> Self {
        // An expansion error's message alone lacks the word that failed: keep its full text.
        let message = match &e {
            dockerfile_parser::Error::Expand { .. } => e.to_string(),
            _ => e.message().to_owned(),
        };
        Error::Input {
            message,
            line: e.line(),
            kind: ErrorKind::InvalidInput,
        }
    }
}
