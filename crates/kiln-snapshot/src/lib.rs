//! Where filesystems live: the content store (blobs by sha256), layer directories (each an
//! overlayfs-format upper dir), views that stack layers (overlayfs, read-only or with a fresh
//! upper dir; or, where overlayfs is unavailable, copies that are diffed back into the same
//! upper-dir format), the layer diff that turns an upper dir into an OCI layer tar, and the
//! reverse: the safe import of a (possibly hostile) OCI layer blob into a layer directory.
//!
//! Architecture invariant: knows files, layers and mounts, nothing of build graphs, ops or
//! plugins. Depends only on `kiln-types`. Everything written into the store appears atomically
//! (written under `tmp/`, then renamed), so a killed build never leaves a half-written blob or
//! layer visible.

mod copy;
mod flush;
mod format;
mod fuse;
pub mod gc;
mod gzip;
mod import;
mod layer_tar;
mod lazy;
mod mount_ns;
mod session;
mod store;
pub mod tar_limits;
pub mod verify;
mod view;

pub use import::ImportedLayer;
pub use layer_tar::{write_layer_tar, Compression};
pub use mount_ns::{isolate_mounts, Isolation};
pub use store::{BlobWriter, LayerBlob, LayerBuilder, LayerId, Snapshot, SnapshotterKind, Store};
pub use view::{ReadView, WriteView};

/// Whether this process runs in a user namespace (rootless kiln: uid 0 here is an ordinary
/// user on the host), where device nodes cannot be created and overlay uses `userxattr`.
pub fn in_user_namespace() -> bool {
    format::user_namespace().is_some()
}

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
    /// A layer blob whose media type this build cannot unpack.
    #[error(
        "import layer blob {blob}: unsupported media type {media_type:?} \
         (kiln reads OCI and docker layers: tar, tar+gzip, tar+zstd)"
    )]
    UnsupportedMediaType {
        /// The blob.
        blob: kiln_types::Digest,
        /// Its announced media type.
        media_type: String,
    },
    /// A layer tar entry that is refused: it would reach outside the layer, or is malformed.
    #[error("import layer blob {blob}: entry {entry:?}: {why}")]
    BadEntry {
        /// The blob.
        blob: kiln_types::Digest,
        /// The entry's name as written in the tar.
        entry: String,
        /// Why it is refused.
        why: String,
    },
    /// Extracting a layer tar entry failed.
    #[error("import layer blob {blob}: entry {entry:?}: {op}: {source}")]
    Extract {
        /// The blob.
        blob: kiln_types::Digest,
        /// The entry's name as written in the tar.
        entry: String,
        /// What was attempted.
        op: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The process could not get a mount namespace of its own.
    #[error("{what}: {why}")]
    Namespace {
        /// What was attempted.
        what: &'static str,
        /// Why it failed.
        why: String,
    },
    /// A fuse-overlayfs mount failed.
    #[error("mount fuse-overlayfs on {target}: {why}")]
    FuseMount {
        /// The mount point.
        target: std::path::PathBuf,
        /// Why it failed.
        why: String,
    },
    /// A store made by rootless kiln opened by kiln as root, or the reverse: their layers mark
    /// opaque directories with different xattrs, so the other's views would be wrong.
    #[error("{}", store::other_mode_message(root, made_with, reads))]
    StoreOfOtherMode {
        /// The store's root.
        root: std::path::PathBuf,
        /// The xattr its layers use.
        made_with: String,
        /// The xattr this process uses.
        reads: &'static str,
    },
    /// `KILN_SNAPSHOTTER` names no snapshotter.
    #[error("KILN_SNAPSHOTTER={0:?}: expected `overlay`, `fuse-overlayfs` or `copy`")]
    BadSnapshotter(String),
    /// A blob of the store whose bytes no longer match its digest.
    #[error(transparent)]
    BlobChanged(#[from] verify::BlobMismatch),
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
