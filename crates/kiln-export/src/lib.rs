//! Exporters: turn a result snapshot and its image config into an image (layer blobs, config,
//! manifest in the content store), then write it out: an OCI image layout as a directory or a
//! tarball, a docker-archive tarball or a `docker load` stream, or the plain filesystem into a
//! local directory or one tar.
//!
//! Architecture invariant: exporters read snapshots and write outside the store; they know
//! nothing of graphs, ops or plugins. Output is reproducible: the same snapshot and config give
//! byte-identical files (sorted entries, fixed tar metadata, no timestamps invented here).

mod attest;
mod attest_files;
mod docker;
mod format;
mod image;
mod index;
mod local;
mod oci;
mod tar_fs;

pub use attest::{
    assemble_attested_index, attestation_manifest, Statement, ANNOTATION_PREDICATE_TYPE,
    ANNOTATION_REFERENCE_DIGEST, ANNOTATION_REFERENCE_TYPE, MEDIA_TYPE_IN_TOTO,
    REFERENCE_TYPE_ATTESTATION,
};
pub use attest_files::{
    export_local_attested, export_tar_attested, file_subjects, write_attestation_files,
    AttestationFile, PROVENANCE_FILE, SBOM_FILE,
};
pub use docker::{docker_daemon_answers, export_docker, load_docker, load_docker_tarball};
pub use format::{Annotation, AnnotationKind, CompressionKind, ImageFormat};
pub use image::{assemble_image, Image, ImageOptions};
pub use index::{
    assemble_index, export_oci_index, index_document, layout_index_of, platform_format, ImageIndex,
    IndexDocument,
};
pub use local::export_local;
pub use oci::{export_oci, layout_tar_header, read_index, OCI_LAYOUT};
pub use tar_fs::{export_tar, export_tar_dir, TarDest};

/// Errors of the exporters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Snapshot(#[from] kiln_snapshot::Error),
    /// A `-t` name is not a valid image reference.
    #[error("cannot name the image: {0}")]
    Name(#[from] kiln_types::reference::ReferenceError),
    /// The export options do not fit together or the image (compression, media types,
    /// annotations).
    #[error("invalid export options: {0}")]
    Options(String),
    /// A layer blob whose content is not what the image says it is.
    #[error("layer {layer}: {why}")]
    Layer {
        /// The layer blob.
        layer: kiln_types::Digest,
        /// What is wrong.
        why: String,
    },
    /// `--load`: docker could not take the image.
    #[error("--load: {0}")]
    Load(String),
    /// Writing the output failed.
    #[error("export to {path}: {source}")]
    Io {
        /// Where.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Error {
    /// The store's blob whose bytes no longer match its digest, when that is why the export
    /// failed: the caller may drop it (`Store::drop_blob`), assemble the image again (which
    /// computes a layer's blob again from its directory) and retry.
    pub fn changed_blob(&self) -> Option<&kiln_types::Digest> {
        match self {
            Error::Snapshot(kiln_snapshot::Error::BlobChanged(m)) => Some(&m.digest),
            _ => None,
        }
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}
