//! What `kiln imagetools` needs of registries, as buildx's `imagetools` does it: documents as
//! the registry serves them, image configs read into memory, and images copied between
//! repositories without pulling their layers into kiln (cross-repository mounts; a streamed
//! copy only where a mount is impossible or refused).

use kiln_types::image::{Descriptor, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use kiln_types::Digest;

use crate::select::{Document, MAX_CONFIG_SIZE, MAX_NESTING};
use crate::{parse_document, Error, Op, Reference, Registry};

/// What was done to put one blob into the target repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobCopy {
    /// The target repository had it.
    Present,
    /// Mounted from the source repository by the registry: no byte went through kiln.
    Mounted,
    /// Read from the source and written to the target, streamed through kiln's memory.
    Streamed,
}

/// What copying an image did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Each blob (configs and layers of every image) and what was done for it.
    pub blobs: Vec<(Digest, BlobCopy)>,
    /// The manifests and indexes put into the target, children first.
    pub manifests: Vec<Digest>,
}

/// The media type of a parsed document: its own `mediaType`, else the OCI one of its kind
/// (OCI makes the member optional).
pub fn media_type_of(doc: &Document) -> &str {
    match doc {
        Document::Manifest(m) => m.media_type.as_deref().unwrap_or(MEDIA_TYPE_MANIFEST),
        Document::Index(i) => i.media_type.as_deref().unwrap_or(MEDIA_TYPE_INDEX),
    }
}

impl Registry {
    /// The image config `desc` of repository `r`, read into memory (at most
    /// [`MAX_CONFIG_SIZE`] bytes), verified by digest; the store is not involved.
    pub async fn read_config_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
    ) -> Result<Vec<u8>, Error> {
        self.inner.read_blob(r, desc, MAX_CONFIG_SIZE).await
    }

    /// Puts `manifest` (a manifest or index, as bytes) into `to`: under `to`'s digest when it
    /// has one (which must be the manifest's), else its tag (`latest` without one). Returns
    /// the manifest digest. The registry refuses a manifest whose blobs or children it lacks.
    pub async fn put_manifest(
        &self,
        to: &Reference,
        manifest: &[u8],
        media_type: &str,
    ) -> Result<Digest, Error> {
        self.inner.put_manifest(to, manifest, media_type).await
    }

    /// Copies the manifest or index `digest` of repository `from` into repository `to` (under
    /// its digest), with everything it references: the manifests of an index, the config and
    /// layers of a manifest. Blobs go by cross-repository mount where the registry allows it
    /// (see [`BlobCopy`]); the documents are read and written whole, being small.
    pub async fn copy_image(
        &self,
        from: &Reference,
        to: &Reference,
        digest: Digest,
    ) -> Result<CopyReport, Error> {
        let mut report = CopyReport::default();
        self.copy_document(from, to, digest, 0, &mut report).await?;
        Ok(report)
    }

    async fn copy_document(
        &self,
        from: &Reference,
        to: &Reference,
        digest: Digest,
        depth: usize,
        report: &mut CopyReport,
    ) -> Result<(), Error> {
        if depth > MAX_NESTING {
            return Err(Error::BadDocument {
                op: Op::Resolve,
                image: from.to_string(),
                why: format!("image indexes nested more than {MAX_NESTING} deep"),
            });
        }
        let source = Reference {
            digest: Some(digest),
            ..from.clone()
        };
        let (_, bytes) = self.inner.fetch_manifest(&source).await?;
        let doc = parse_document(&bytes).map_err(|why| Error::BadDocument {
            op: Op::Resolve,
            image: source.to_string(),
            why,
        })?;
        match &doc {
            Document::Index(index) => {
                for child in &index.manifests {
                    // Boxed: an async fn cannot hold itself by value.
                    Box::pin(self.copy_document(from, to, child.digest, depth + 1, report)).await?;
                }
            }
            Document::Manifest(m) => {
                let blobs: Vec<Descriptor> = std::iter::once(m.config.clone())
                    .chain(m.layers.iter().cloned())
                    .collect();
                let done = self.inner.copy_blobs(from, to, &blobs).await?;
                report
                    .blobs
                    .extend(blobs.iter().map(|b| b.digest).zip(done));
            }
        }
        let target = Reference {
            digest: Some(digest),
            ..to.clone()
        };
        self.inner
            .put_manifest(&target, &bytes, media_type_of(&doc))
            .await?;
        report.manifests.push(digest);
        Ok(())
    }
}
