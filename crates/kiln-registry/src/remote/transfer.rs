//! Registry-to-registry work for `kiln imagetools`: small blobs (image configs) read into
//! memory, blobs copied between repositories by cross-repository mount (falling back to a copy
//! streamed from one registry to the other, never written to disk), and manifests put by
//! digest or tag. A child of `remote` for its sessions, retries and error mapping.

use futures_util::StreamExt;
use kiln_types::image::Descriptor;
use kiln_types::Digest;
use oci_client::errors::OciDistributionError;
use oci_client::Reference as OciRef;

use super::{retry, transient, Remote, Session, PARALLEL_BLOBS};
use crate::{BlobCopy, Error, Op, Reference};

impl Remote {
    /// Blob `desc` of repository `r`, read whole into memory: at most `max` bytes (and no more
    /// than the descriptor says), verified by digest. Mirrors are not asked: the blob is
    /// needed from where its manifest was read.
    pub(crate) async fn read_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        max: u64,
    ) -> Result<Vec<u8>, Error> {
        let s = self.session(r, Op::Resolve).await?;
        crate::select::check_size(&format!("blob {}", desc.digest), desc.size, max)
            .map_err(|why| s.bad_document(why))?;
        let oref = s.oci_ref(r.digest.as_ref());
        let d = desc.digest.to_string();
        let bytes = retry(transient, || async {
            let mut stream = s.client.pull_blob_stream(&oref, d.as_str()).await?;
            let mut buf = Vec::new();
            while let Some(chunk) = stream.next().await {
                buf.extend_from_slice(&chunk?);
                if buf.len() as u64 > desc.size {
                    break;
                }
            }
            Ok(buf)
        })
        .await
        .map_err(|e: OciDistributionError| match &e {
            // oci-client checks the digest as the body ends: a blob whose bytes changed in the
            // registry is a mismatch naming both digests, not a registry failure.
            OciDistributionError::IoError(io) => match super::digest_error(io) {
                Some(oci_client::errors::DigestError::VerificationError { actual, .. }) => {
                    Error::DigestMismatch {
                        op: s.op,
                        image: s.image.clone(),
                        what: "blob",
                        expected: desc.digest.to_string(),
                        actual: actual.clone(),
                    }
                }
                _ => s.error(e),
            },
            _ => s.error(e),
        })?;
        if bytes.len() as u64 > desc.size {
            return Err(s.bad_document(format!(
                "blob {} is larger than the {} bytes its descriptor says",
                desc.digest, desc.size
            )));
        }
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(s.mismatch("blob", &desc.digest, &actual));
        }
        Ok(bytes)
    }

    /// Puts `blobs` of repository `from` into repository `to`, several at once: nothing for a
    /// blob `to` has, else a cross-repository mount when both are on one registry, else (or
    /// when the registry refuses the mount) a copy streamed through kiln's memory, chunk by
    /// chunk. Returns what was done for each blob, in order.
    pub(crate) async fn copy_blobs(
        &self,
        from: &Reference,
        to: &Reference,
        blobs: &[Descriptor],
    ) -> Result<Vec<BlobCopy>, Error> {
        let src = self.session(from, Op::Resolve).await?;
        let dst = self.session(to, Op::Push).await?;
        let (src, dst) = (&src, &dst);
        let same_registry = from.registry == to.registry;
        let mut results: Vec<(usize, Result<BlobCopy, Error>)> = futures_util::stream::iter(
            blobs
                .iter()
                .enumerate()
                .map(|(i, d)| async move { (i, copy_blob(src, dst, same_registry, d).await) }),
        )
        .buffer_unordered(PARALLEL_BLOBS)
        .collect()
        .await;
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }

    /// Puts `manifest` into `to`: under its digest when `to` has one, else under its tag (or
    /// `latest`). Returns the manifest's digest.
    pub(crate) async fn put_manifest(
        &self,
        to: &Reference,
        manifest: &[u8],
        media_type: &str,
    ) -> Result<Digest, Error> {
        let s = self.session(to, Op::Push).await?;
        let digest = Digest::of(manifest);
        if let Some(want) = to.digest {
            if want != digest {
                return Err(s.mismatch("manifest", &want, &digest));
            }
        }
        s.upload_manifest(&s.oci_ref(to.digest.as_ref()), manifest, media_type)
            .await?;
        Ok(digest)
    }
}

impl Session<'_> {
    /// Puts `manifest` under `oref` (a tag or its digest), with retries.
    pub(super) async fn upload_manifest(
        &self,
        oref: &OciRef,
        manifest: &[u8],
        media_type: &str,
    ) -> Result<(), Error> {
        let content_type =
            http::HeaderValue::from_str(media_type).map_err(|e| Error::Registry {
                op: self.op,
                image: self.image.clone(),
                why: format!("bad media type {media_type}: {e}"),
            })?;
        let body = bytes::Bytes::copy_from_slice(manifest);
        retry(transient, || {
            self.client
                .push_manifest_raw(oref, body.clone(), content_type.clone())
        })
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }
}

/// One blob from `src`'s repository to `dst`'s (see [`Remote::copy_blobs`]).
async fn copy_blob(
    src: &Session<'_>,
    dst: &Session<'_>,
    same_registry: bool,
    desc: &Descriptor,
) -> Result<BlobCopy, Error> {
    let d = desc.digest.to_string();
    let to_ref = dst.oci_ref(None);
    let from_ref = src.oci_ref(None);
    let present = retry(transient, || dst.client.blob_exists(&to_ref, &d))
        .await
        .map_err(|e| dst.error(e))?;
    if present {
        return Ok(BlobCopy::Present);
    }
    if same_registry {
        match dst.client.mount_blob(&to_ref, &from_ref, &d).await {
            Ok(()) => return Ok(BlobCopy::Mounted),
            // 202 Accepted: the registry declined the mount (no access to the source, or it
            // does not mount) and opened an upload instead, which it expires by itself.
            Err(OciDistributionError::SpecViolationError(_)) => {}
            // A registry that does not know the parameters answers like a failed upload.
            Err(OciDistributionError::ServerError { code, .. }) if code < 500 => {}
            Err(e) => return Err(dst.error(e)),
        }
    }
    // Each attempt reads the blob from the start: a stream cannot be replayed. The target
    // registry checks the digest when the upload ends, so a corrupt copy is never kept.
    // Which side failed decides whose error it is (the source's image or the target's).
    retry(
        |(_, e): &(bool, OciDistributionError)| transient(e),
        || async {
            let stream = src
                .client
                .pull_blob_stream(&from_ref, d.as_str())
                .await
                .map_err(|e| (true, e))?;
            let stream = stream
                .stream
                .map(|c| c.map_err(OciDistributionError::IoError));
            dst.client
                .push_blob_stream(&to_ref, stream, &d, Some(desc.size))
                .await
                .map_err(|e| (false, e))
        },
    )
    .await
    .map_err(|(at_source, e)| {
        if at_source {
            src.error(e)
        } else {
            dst.error(e)
        }
    })?;
    Ok(BlobCopy::Streamed)
}
