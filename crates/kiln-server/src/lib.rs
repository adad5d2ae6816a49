//! `kiln serve` and `kiln build --builder`: the build daemon (one [`kiln_engine::Engine`], one
//! store, several clients at once) and the client that runs a build on it. The wire contract is
//! `kiln-api`'s builder.proto: one bidirectional stream per build session (request, context
//! sync, progress, outputs, result), and a unary `Info`.
//!
//! What the daemon trusts of a client: nothing on its filesystem. The Dockerfile arrives as
//! content, local contexts arrive through `kiln-contextsync` mirrors under
//! `<root>/contexts/<key>`, and outputs that land on the client are made in a session directory
//! and streamed back.
//!
//! Architecture invariant: this crate holds the transport and the session, not build logic: it
//! turns a wire request into an engine [`kiln_engine::BuildRequest`] and calls
//! [`kiln_engine::Engine::build`], exactly what a local `kiln build` calls. It does no
//! rendering: progress leaves as events, failures as a [`view::FailureView`] the CLI prints.

mod address;
pub mod client;
mod localcache;
pub mod multinode;
pub mod server;
pub mod view;
mod wire;

pub use address::Address;
pub use kiln_contextsync::MirrorUsage;

/// Errors of the daemon and of the client's transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--addr` / `--builder` is not an address kiln can use.
    #[error("invalid builder address {addr:?}: {why}")]
    Address {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        why: String,
    },
    /// The daemon could not be reached (connect failed or timed out).
    #[error("cannot reach builder at {addr}: {why}")]
    Unreachable {
        /// The address.
        addr: String,
        /// Why.
        why: String,
    },
    /// The session's stream broke after it started (the daemon died, the network failed).
    #[error("builder at {addr}: connection lost: {why}")]
    ConnectionLost {
        /// The address.
        addr: String,
        /// Why, as the transport said.
        why: String,
    },
    /// The daemon answered with something the protocol does not allow.
    #[error("builder at {addr}: protocol error: {why}")]
    Protocol {
        /// The address.
        addr: String,
        /// What was wrong.
        why: String,
    },
    /// The request cannot be sent to a remote builder (an option that needs the client's
    /// files the daemon would not see).
    #[error("{0}")]
    Unsupported(String),
    /// A local file or socket operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Context sync failed on the client's side (scanning the directory).
    #[error("syncing context {name:?}: {source}")]
    Sync {
        /// The context's name ("" is the main context).
        name: String,
        /// The cause.
        source: kiln_contextsync::Error,
    },
    /// The daemon could not start serving.
    #[error("serving on {addr}: {why}")]
    Serve {
        /// The address.
        addr: String,
        /// Why.
        why: String,
    },
    /// No node of a builder builds a platform of the build.
    #[error("no node of builder {builder:?} builds {platform}: {nodes}")]
    NoNode {
        /// The builder's name.
        builder: String,
        /// The platform.
        platform: String,
        /// Its nodes and their platforms.
        nodes: String,
    },
    /// A node's result could not be used (a multi-node build).
    #[error("node {node}: {why}")]
    Node {
        /// The node's name.
        node: String,
        /// What was wrong.
        why: String,
    },
    /// The client's push of a multi-node build's index failed.
    #[error("pushing the image index to {name}: {source}")]
    Push {
        /// The image name.
        name: String,
        /// The registry's error (boxed: it is large, and rare).
        source: Box<kiln_registry::Error>,
    },
    /// Merging the nodes' registry caches of a multi-node build failed.
    #[error(transparent)]
    CacheMerge(Box<kiln_engine::Error>),
    /// Writing a multi-node build's assembled output failed.
    #[error(transparent)]
    Export(#[from] kiln_export::Error),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}
