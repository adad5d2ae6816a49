//! Where filesystems live: the content store (blobs by sha256), layer directories (each an
//! overlayfs-format upper dir), views that stack layers (overlayfs, read-only or with a fresh
//! upper dir), and the layer diff that turns an upper dir into an OCI layer tar.
//!
//! Architecture invariant: knows files, layers and mounts, nothing of build graphs, ops or
//! plugins. Depends only on `kiln-types`. Everything written into the store appears atomically
//! (written under `tmp/`, then renamed), so a killed build never leaves a half-written blob or
//! layer visible.

mod layer_tar;
mod store;
mod view;

pub use layer_tar::{write_layer_tar, Compression};
pub use store::{BlobWriter, LayerBlob, LayerBuilder, LayerId, Snapshot, Store};
pub use view::{ReadView, WriteView};

/// Errors of the snapshot layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: std::path::PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A mount or unmount failed.
    #[error("mount {what}: {source}")]
    Mount {
        /// The mount.
        what: String,
        /// Why it failed.
        source: nix::Error,
    },
    /// Store metadata that cannot be read.
    #[error("corrupt store entry {path}: {why}")]
    Corrupt {
        /// The entry.
        path: std::path::PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}
