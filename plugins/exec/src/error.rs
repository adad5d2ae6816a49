//! The plugin's error type, turned into a [`PluginError`] at the boundary.

use std::io;
use std::path::PathBuf;

use kiln_plugin_sdk::proto::{ErrorKind, PluginError};

/// Why a RUN step could not be set up or run. A process that runs and exits non-zero is not an
/// error: its exit code is the result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be run as given (no argv, a relative mount destination...).
    #[error("{0}")]
    InvalidInput(String),
    /// The request asks for something this plugin does not do.
    #[error("{0}")]
    Unsupported(String),
    /// A user, group or executable named by the step does not exist in the container.
    #[error("{0}")]
    NotFound(String),
    /// The build was cancelled while the process ran; it was killed.
    #[error("the process was killed because the build was cancelled")]
    Cancelled,
    /// A host file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Setting up the sandbox failed inside the new namespaces (a mount, pivot_root...).
    #[error("cannot set up the sandbox: {step}: {source}")]
    Sandbox {
        /// The setup step that failed, with its target.
        step: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Running runc failed (it could not start the container, or could not be started).
    #[error("runc run failed: {0}")]
    Runc(String),
    /// The OOM killer stopped the step: it needed more than its cgroup's memory limit.
    #[error(
        "the process was killed by the OOM killer: it needed more memory than its limit of {} \
         (--memory)",
        crate::cgroup::human_bytes(*limit)
    )]
    OutOfMemory {
        /// The limit in bytes.
        limit: u64,
    },
}

impl Error {
    /// An [`Error::Io`] on `path`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Io { .. } | Error::Sandbox { .. } | Error::Runc(_) => ErrorKind::Internal,
            Error::OutOfMemory { .. } => ErrorKind::Internal,
        }
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        PluginError::new(e.kind(), e.to_string())
    }
}
