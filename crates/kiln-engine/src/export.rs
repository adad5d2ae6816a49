//! The export step: every `--output` of a build written from one result. Image exports that
//! ask for the same image format share one assembled image; exports asking for different
//! compression, media types or annotations each get theirs (as BuildKit runs one exporter per
//! output).

use kiln_export::{Image, ImageFormat, ImageOptions};
use kiln_snapshot::{Snapshot, Store};
use kiln_solver::ProgressSink;
use kiln_types::image::{Descriptor, ImageConfig};
use kiln_types::Digest;

use crate::{push, Error, Export};

/// What the export step needs besides the outputs.
pub(crate) struct ExportContext<'a> {
    pub store: &'a Store,
    pub registry: &'a kiln_registry::Registry,
    pub handle: &'a tokio::runtime::Handle,
    pub tags: &'a [String],
    pub epoch: Option<u64>,
    pub progress: &'a dyn ProgressSink<Digest>,
    /// `--cache-to type=inline`: the cache config to put into each image's config.
    pub inline_cache: Option<&'a str>,
    /// `--provenance`, `--sbom`: an OCI or registry export becomes an index of the image and
    /// its attestation manifest.
    pub attester: Option<&'a crate::attest::Attester>,
}

/// What the exports wrote: the image of the first image export, and the index of the first
/// attested one (whose digest is then the build's, as BuildKit's `containerimage.digest`).
pub(crate) type Exported = (Option<Image>, Option<Descriptor>);

/// Refuses outputs that cannot be written, before anything is built: `rewrite-timestamp`
/// without `SOURCE_DATE_EPOCH`, `--load` without a docker daemon.
pub(crate) fn check(exports: &[Export], epoch: Option<u64>) -> Result<(), Error> {
    if exports.iter().any(|e| matches!(e, Export::Load { .. })) {
        kiln_export::docker_daemon_answers()?;
    }
    let rewrite = exports
        .iter()
        .any(|e| e.image_format().is_some_and(|f| f.rewrite_timestamp));
    if rewrite && epoch.is_none() {
        return Err(Error::Unsupported(
            "--output ...,rewrite-timestamp=true needs SOURCE_DATE_EPOCH: pass \
             --build-arg SOURCE_DATE_EPOCH=<unix seconds> (or set it in the environment)"
                .into(),
        ));
    }
    Ok(())
}

/// Most changed blobs one export rebuilds before it gives up (each costs a new attempt).
const MAX_REBUILT_BLOBS: usize = 16;

/// Writes every export of `snapshot`; returns the image of the first image export.
///
/// No blob whose bytes changed on disk is ever exported or pushed: every blob is checked
/// against its digest as it is written out (before it is pushed or loaded, where a stream
/// cannot be taken back). A changed blob is then dropped with what was derived from it and the
/// exports start again: a layer's blob is computed again from the layer's directory (the
/// files every build used), the same bytes for a layer kiln made; a pulled layer gets
/// kiln's tar of the same files (another diff id and digest) until a pull of it brings the
/// registry's blob back as its form; configs and manifests are written again. Rebuilding rather than failing keeps a build that can be
/// correct from failing; the layer directory is the source of truth.
pub(crate) fn run(
    cx: &ExportContext<'_>,
    exports: &[Export],
    snapshot: &Snapshot,
    config: &ImageConfig,
) -> Result<Exported, Error> {
    let mut rebuilt: Vec<Digest> = Vec::new();
    loop {
        let err = match run_once(cx, exports, snapshot, config) {
            Ok(image) => return Ok(image),
            Err(e) => e,
        };
        let Some(digest) = changed_blob(&err) else {
            return Err(err);
        };
        // The same blob changed again right after it was written: the disk is failing.
        if rebuilt.contains(&digest) || rebuilt.len() >= MAX_REBUILT_BLOBS {
            return Err(err);
        }
        let dropped = cx.store.drop_blob(&digest)?;
        let users = if dropped.layers.is_empty() {
            String::new()
        } else {
            let ids: Vec<&str> = dropped.layers.iter().map(|l| l.0.as_str()).collect();
            format!(" (exported form of layer {})", ids.join(", "))
        };
        cx.progress.send(kiln_solver::Event::Log {
            id: Digest::of(b"internal:export"),
            name: "exporting to image".to_owned(),
            line: format!(
                "blob {digest}{users} changed on disk: removed from the store, rebuilding it"
            ),
        });
        rebuilt.push(digest);
    }
}

/// The blob of the store found changed on disk, when that is why an export failed.
fn changed_blob(e: &Error) -> Option<Digest> {
    match e {
        Error::Snapshot(kiln_snapshot::Error::BlobChanged(m)) => Some(m.digest),
        Error::Export(e) => e.changed_blob().copied(),
        _ => None,
    }
}

/// Checks every blob of `image` against its digest, streamed: for destinations that cannot
/// take back what they were sent (a registry, `docker load`).
fn check_blobs(store: &Store, image: &Image) -> Result<(), Error> {
    let mut blobs = image.blobs();
    blobs.sort();
    blobs.dedup();
    for d in &blobs {
        if let kiln_snapshot::verify::BlobState::Changed(m) = store.check_blob(d)? {
            return Err(kiln_snapshot::Error::BlobChanged(m).into());
        }
    }
    Ok(())
}

/// The attestation files of a filesystem output of `snapshot` and their time, when the build
/// writes any.
fn files_of(
    cx: &ExportContext<'_>,
    snapshot: &Snapshot,
) -> Result<Option<(Vec<kiln_export::AttestationFile>, std::time::SystemTime)>, Error> {
    let Some(a) = cx.attester else {
        return Ok(None);
    };
    let files = a.files(cx.store, 0, snapshot)?;
    Ok((!files.is_empty()).then(|| (files, a.mtime())))
}

/// One attempt at every export of `snapshot`.
fn run_once(
    cx: &ExportContext<'_>,
    exports: &[Export],
    snapshot: &Snapshot,
    config: &ImageConfig,
) -> Result<Exported, Error> {
    let mut images: Vec<(ImageFormat, Image)> = Vec::new();
    let mut first = None;
    let mut first_index = None;
    let mut image_for = |format: &ImageFormat| -> Result<Image, Error> {
        let image = match images.iter().find(|(f, _)| f == format) {
            Some((_, i)) => i.clone(),
            None => {
                let mut i = kiln_export::assemble_image(
                    cx.store,
                    snapshot,
                    config.clone(),
                    ImageOptions {
                        format: format.clone(),
                        source_date_epoch: cx.epoch,
                    },
                )?;
                if let Some(cache) = cx.inline_cache {
                    i = crate::remote_cache::embed_inline(cx.store, i, cache)?;
                }
                images.push((format.clone(), i.clone()));
                i
            }
        };
        first.get_or_insert_with(|| image.clone());
        Ok(image)
    };
    for e in exports {
        match e {
            Export::Oci { dest, tar, format } => match cx.attester {
                Some(a) => {
                    let index = a.single(cx.store, &image_for(format)?, snapshot, format)?;
                    kiln_export::export_oci_index(cx.store, &index, cx.tags, dest, *tar)?;
                    first_index.get_or_insert(index.descriptor);
                }
                None => {
                    kiln_export::export_oci(cx.store, &image_for(format)?, cx.tags, dest, *tar)?
                }
            },
            Export::Docker { dest, format } => {
                kiln_export::export_docker(cx.store, &image_for(format)?, cx.tags, dest)?
            }
            Export::Load { format } => {
                let image = image_for(format)?;
                check_blobs(cx.store, &image)?;
                kiln_export::load_docker(cx.store, &image, cx.tags)?
            }
            Export::Registry {
                names,
                format,
                push_by_digest,
            } => {
                let image = image_for(format)?;
                if let Some(a) = cx.attester {
                    let index = a.single(cx.store, &image, snapshot, format)?;
                    let (h, r) = (cx.handle, cx.registry);
                    let by_digest = *push_by_digest;
                    crate::platforms::push_index(
                        cx.store,
                        r,
                        h,
                        &index,
                        names,
                        by_digest,
                        cx.progress,
                    )?;
                    first_index.get_or_insert(index.descriptor);
                    continue;
                }
                check_blobs(cx.store, &image)?;
                push(
                    cx.store,
                    cx.registry,
                    cx.handle,
                    &image,
                    names,
                    *push_by_digest,
                    cx.progress,
                )?
            }
            // Attestations become files beside the result's (BuildKit's local and tar
            // exporters), when any is not inline-only.
            Export::Local { dest } => match files_of(cx, snapshot)? {
                Some((files, t)) => {
                    kiln_export::export_local_attested(cx.store, snapshot, dest, &files, t)?
                }
                None => kiln_export::export_local(cx.store, snapshot, dest)?,
            },
            Export::Tar { dest } => match files_of(cx, snapshot)? {
                Some((files, t)) => {
                    kiln_export::export_tar_attested(cx.store, snapshot, dest, &files, t)?
                }
                None => kiln_export::export_tar(cx.store, snapshot, dest)?,
            },
        }
    }
    Ok((first, first_index))
}
