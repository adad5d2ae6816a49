//! The error type of this crate.

use std::fmt;
use std::path::PathBuf;

use kiln_graph::GraphError;
use kiln_plugin_sdk::proto::{self, ErrorKind, Kind, PluginError};

/// Everything that can go wrong finding, loading or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A library that cannot be used as a plugin.
    #[error("{}", .0)]
    Refused(Refused),
    /// No plugin answers to a name, syntax, keyword or op.
    #[error("no {kind} plugin for {name:?}; {}", found(available, searched))]
    NotFound {
        /// The kind looked for.
        kind: Kind,
        /// What was asked for.
        name: String,
        /// What the registry has for that kind (names and what they answer to).
        available: Vec<String>,
        /// The directories the registry scanned, in search order.
        searched: Vec<PathBuf>,
    },
    /// The plugin reported an error (or panicked). `error.location` points into the build file.
    #[error("{}", plugin_failed(plugin, error))]
    Plugin {
        /// The plugin name.
        plugin: String,
        /// Its error.
        error: PluginError,
    },
    /// The plugin answered with bytes that are not the expected message.
    #[error("plugin {plugin} answered {method} with an unreadable message: {source}")]
    Protocol {
        /// The plugin name.
        plugin: String,
        /// The method called.
        method: String,
        /// The decoding failure.
        source: serde_json::Error,
    },
    /// The plugin returned a build graph that breaks the graph rules.
    #[error("plugin {plugin} returned an invalid build graph from {method}: {source}")]
    InvalidGraph {
        /// The plugin name.
        plugin: String,
        /// The method called.
        method: String,
        /// What is wrong with it (boxed: digests make it large).
        source: Box<GraphError>,
    },
    /// The plugin returned a graph without the result output.
    #[error("plugin {plugin} returned a build graph without outputs from {method}")]
    NoOutput {
        /// The plugin name.
        plugin: String,
        /// The method called.
        method: String,
    },
    /// The plugin does not declare the kind the call needs.
    #[error("plugin {plugin} is not a {kind} plugin")]
    NotCapable {
        /// The plugin name.
        plugin: String,
        /// The kind the call needs.
        kind: Kind,
    },
    /// A request could not be encoded (a bug on the host side).
    #[error("cannot encode the {method} request: {source}")]
    Encode {
        /// The method.
        method: String,
        /// Why.
        source: serde_json::Error,
    },
}

impl Error {
    /// The plugin's own error, when the plugin failed (its location points into the build file).
    pub fn plugin_error(&self) -> Option<&PluginError> {
        match self {
            Error::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn found(available: &[String], searched: &[PathBuf]) -> String {
    if !available.is_empty() {
        return format!("found: {}", available.join(", "));
    }
    // A fresh `cargo build --release` has no plugins beside its binary: say where kiln looked
    // and how to put them there, so the first run does not end in a dead end.
    let looked = if searched.is_empty() {
        String::new()
    } else {
        let dirs: Vec<String> = searched.iter().map(|d| d.display().to_string()).collect();
        format!(" in {}", dirs.join(", "))
    };
    format!(
        "none is installed{looked} (the search path: <dir of kiln>/plugins, \
         <dir of kiln>/../lib/kiln/plugins, ${}, --plugin-dir). From a kiln source tree, \
         `cargo xtask install` installs kiln with its bundled plugins; or point ${} or \
         --plugin-dir at a directory holding them (`kiln plugins ls` shows the search path and \
         refused files)",
        crate::discovery::PLUGIN_PATH_ENV,
        crate::discovery::PLUGIN_PATH_ENV,
    )
}

fn plugin_failed(plugin: &str, error: &PluginError) -> String {
    // The SDK's panic message already names the plugin.
    if error.kind == ErrorKind::Panic {
        error.to_string()
    } else {
        format!("plugin {plugin}: {error}")
    }
}

/// A file that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The library file.
    pub path: PathBuf,
    /// Why it was refused.
    pub reason: Refusal,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The dynamic loader could not open it (the `dlerror` text).
    Open(String),
    /// It does not export the probe symbol.
    NotAPlugin,
    /// It was built for another plugin ABI.
    AbiMismatch {
        /// The ABI it was built for.
        found: u32,
        /// The ABI this kiln speaks.
        expected: u32,
    },
    /// abi_stable refused it (another abi_stable version, or a different root module layout).
    Incompatible(String),
    /// Its manifest is missing, unreadable or inconsistent.
    Manifest(String),
    /// It requires host capabilities this kiln does not have (`Manifest::requires`).
    MissingCapabilities {
        /// The capabilities it requires that this kiln lacks, in its order.
        missing: Vec<String>,
        /// The message protocol version it was built with.
        protocol: u32,
    },
    /// Another plugin with the same name came earlier in the search path.
    Shadowed {
        /// The plugin name.
        name: String,
        /// The file that won.
        by: PathBuf,
    },
    /// A search directory could not be read.
    Unreadable(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Open(e) => write!(f, "cannot be loaded: {e}"),
            Refusal::NotAPlugin => write!(
                f,
                "not a kiln plugin (no `{}` symbol)",
                kiln_plugin_abi::PROBE_SYMBOL_NAME
            ),
            Refusal::AbiMismatch { found, expected } => write!(
                f,
                "built for kiln plugin ABI {found}, this kiln speaks ABI {expected}; \
                 rebuild the plugin against a matching kiln-plugin-sdk"
            ),
            Refusal::Incompatible(e) => write!(f, "incompatible plugin library: {e}"),
            Refusal::Manifest(e) => write!(f, "invalid plugin manifest: {e}"),
            Refusal::MissingCapabilities { missing, protocol } => write!(
                f,
                "requires host {} {} that this kiln lacks (this kiln speaks plugin protocol {} \
                 and offers: {}; the plugin was built with protocol {protocol}); use a kiln \
                 that offers {}",
                if missing.len() == 1 {
                    "capability"
                } else {
                    "capabilities"
                },
                quoted(missing),
                proto::PROTOCOL_VERSION,
                quoted(proto::HOST_CAPABILITIES),
                if missing.len() == 1 { "it" } else { "them" },
            ),
            Refusal::Shadowed { name, by } => write!(
                f,
                "shadowed: plugin {name:?} is already loaded from {}",
                by.display()
            ),
            Refusal::Unreadable(e) => write!(f, "cannot read the directory: {e}"),
        }
    }
}

/// `"a", "b"`, or `none` for an empty list.
fn quoted<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let q: Vec<String> = names.iter().map(|n| format!("{:?}", n.as_ref())).collect();
    q.join(", ")
}
