//! The error type: every failure names the image (or layout directory and tag) it concerns.

use std::fmt;
use std::path::PathBuf;

/// What was being done when an error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Resolving the manifest and config.
    Resolve,
    /// Fetching layer blobs.
    FetchLayers,
    /// Pushing an image.
    Push,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Resolve => "resolve",
            Op::FetchLayers => "fetch layers of",
            Op::Push => "push",
        })
    }
}

/// What kind of failure an [`Error`] is, for callers that must tell them apart (the engine
/// answers plugins with an error kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// The image, tag, platform or layout does not exist.
    NotFound,
    /// The registry refused the credentials, or there were none (401/403), or they could not
    /// be read.
    Unauthorized,
    /// The registry cannot be reached or fails (connection refused, timeouts, 5xx).
    Unavailable,
    /// The reference, or the image itself, is invalid: bad syntax, content that does not match
    /// its digest, documents too large or inconsistent.
    Invalid,
    /// A local failure: the content store, the http client setup.
    Internal,
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference cannot be parsed.
    #[error(transparent)]
    InvalidReference(#[from] kiln_types::reference::ReferenceError),
    /// The registry cannot be reached (after retries).
    #[error("failed to {op} {image}: cannot connect to {registry}: {why}")]
    Connect {
        /// What was being done.
        op: Op,
        /// The image.
        image: String,
        /// The registry host.
        registry: String,
        /// Why (e.g. `connection refused`).
        why: String,
    },
    /// The registry refused access (401/403).
    #[error(
        "failed to {op} {image}: unauthorized: {why} — log in with docker login or give credentials in {}",
        config.display()
    )]
    Unauthorized {
        /// What was being done.
        op: Op,
        /// The image.
        image: String,
        /// What the registry said, or `authentication required`.
        why: String,
        /// The docker config file credentials are read from.
        config: PathBuf,
    },
    /// The image, manifest or blob does not exist.
    #[error("failed to {op} {image}: not found: {why}")]
    NotFound {
        /// What was being done.
        op: Op,
        /// The image.
        image: String,
        /// What is missing.
        why: String,
    },
    /// Content did not match its digest.
    #[error("failed to {op} {image}: {what} {expected} has the wrong content (digest {actual})")]
    DigestMismatch {
        /// What was being done.
        op: Op,
        /// The image.
        image: String,
        /// `manifest`, `config` or `blob`.
        what: &'static str,
        /// The digest asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// A layer does not unpack to the diff id the image config lists for it.
    #[error(
        "failed to {} {}: layer {} ({}) unpacks to diff id {}, but the image config lists {} \
         (rootfs.diff_ids[{}]): the image is corrupt or was tampered with, so it is refused",
        .0.op, .0.image, .0.index, .0.layer, .0.computed, .0.expected, .0.index
    )]
    DiffIdMismatch(Box<DiffIdMismatch>),
    /// A layer blob that cannot be read as a (compressed) tar.
    #[error("failed to {op} {image}: layer {index} ({layer}) cannot be read: {why}")]
    BadLayer {
        /// What was being done.
        op: Op,
        /// The image.
        image: String,
        /// The layer's position in the manifest, base first, from 0.
        index: usize,
        /// The layer blob.
        layer: kiln_types::Digest,
        /// What is wrong.
        why: String,
    },
    /// An index has no manifest for the requested platform.
    #[error(
        "failed to resolve {image}: no manifest for platform {wanted} (the image has: {})",
        if available.is_empty() { "no platforms".to_owned() } else { available.join(", ") }
    )]
    NoMatchingPlatform {
        /// The image.
        image: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the index offers.
        available: Vec<String>,
    },
    /// A manifest, index or config that cannot be used.
    #[error("failed to {op} {image}: {why}")]
    BadDocument {
        /// What was being done.
        op: Op,
        /// The image.
        image: String,
        /// What is wrong.
        why: String,
    },
    /// Any other registry failure (5xx after retries, protocol violations).
    #[error("failed to {op} {image}: registry error: {why}")]
    Registry {
        /// What was being done.
        op: Op,
        /// The image.
        image: String,
        /// The registry's answer.
        why: String,
    },
    /// An OCI layout directory that cannot be read or has no such image.
    #[error("failed to {op} {image}: {why}")]
    Layout {
        /// What was being done.
        op: Op,
        /// The layout reference (directory and tag).
        image: String,
        /// What is wrong.
        why: String,
    },
    /// Writing into the content store failed.
    #[error("failed to {op} {image}: content store: {source}")]
    Store {
        /// What was being done.
        op: Op,
        /// The image.
        image: String,
        /// The store's error.
        source: kiln_snapshot::Error,
    },
    /// The docker configuration cannot be read.
    #[error("cannot read docker config {}: {why}", path.display())]
    DockerConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A docker credential helper failed.
    #[error("credential helper {helper} failed for {registry}: {why}")]
    CredentialHelper {
        /// The helper program.
        helper: String,
        /// The registry asked about.
        registry: String,
        /// What went wrong.
        why: String,
    },
    /// The http client cannot be set up.
    #[error("cannot create the registry client: {0}")]
    Client(String),
    /// https to a registry needs CA certificates to verify it, and the system has none.
    #[error(
        "cannot reach registry {registry} over https: no CA certificates were found on this \
         system to verify it{} (install the ca-certificates package, point SSL_CERT_FILE or \
         SSL_CERT_DIR at PEM certificates, or give the registry's CA as \
         [registry.\"{registry}\"] ca in kiln.toml); registries reached over plain http \
         (loopback, --insecure-registry, `http = true` in kiln.toml) need none",
        if why.is_empty() { String::new() } else { format!(" ({why})") }
    )]
    NoCaCertificates {
        /// The registry host.
        registry: String,
        /// Why the system's locations gave none, when reading them failed.
        why: String,
    },
    /// A registry's certificate files (kiln.toml's `ca`, `keypair`, docker's certs.d) cannot
    /// be used.
    #[error("registry {registry}: {why}")]
    Tls {
        /// The registry host.
        registry: String,
        /// Which file and what is wrong with it.
        why: String,
    },
    /// The TLS handshake failed over a certificate: the registry's is not trusted, has
    /// expired or is for another name, or the registry refused kiln's client certificate.
    #[error("failed to {op} {image}: registry {registry}: {problem}")]
    Certificate {
        /// What was being done.
        op: Op,
        /// The image.
        image: String,
        /// The registry host.
        registry: String,
        /// The problem and what to do about it.
        problem: String,
    },
}

impl Error {
    /// The kind of failure.
    pub fn category(&self) -> Category {
        match self {
            Error::NotFound { .. } | Error::NoMatchingPlatform { .. } | Error::Layout { .. } => {
                Category::NotFound
            }
            Error::Unauthorized { .. }
            | Error::DockerConfig { .. }
            | Error::CredentialHelper { .. } => Category::Unauthorized,
            Error::Connect { .. }
            | Error::Registry { .. }
            | Error::NoCaCertificates { .. }
            | Error::Certificate { .. } => Category::Unavailable,
            Error::InvalidReference(_)
            | Error::DigestMismatch { .. }
            | Error::DiffIdMismatch(_)
            | Error::BadLayer { .. }
            | Error::BadDocument { .. } => Category::Invalid,
            Error::Store { .. } | Error::Client(_) | Error::Tls { .. } => Category::Internal,
        }
    }
}

/// The details of [`Error::DiffIdMismatch`] (boxed: three digests would make every `Result`
/// of this crate large).
#[derive(Debug)]
pub struct DiffIdMismatch {
    /// What was being done.
    pub op: Op,
    /// The image.
    pub image: String,
    /// The layer's position in the manifest, base first, from 0.
    pub index: usize,
    /// The layer blob.
    pub layer: kiln_types::Digest,
    /// The diff id the config lists.
    pub expected: kiln_types::Digest,
    /// The digest of the layer's uncompressed tar.
    pub computed: kiln_types::Digest,
}
