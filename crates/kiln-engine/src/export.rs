//! The export step: every `--output` of a build written from one result. Image exports that
//! ask for the same image format share one assembled image; exports asking for different
//! compression, media types or annotations each get theirs (as BuildKit runs one exporter per
//! output).

use kiln_export::{Image, ImageFormat, ImageOptions};
use kiln_snapshot::{Snapshot, Store};
use kiln_solver::ProgressSink;
use kiln_types::image::ImageConfig;
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
}

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

/// Writes every export of `snapshot`; returns the image of the first image export.
pub(crate) fn run(
    cx: &ExportContext<'_>,
    exports: &[Export],
    snapshot: &Snapshot,
    config: &ImageConfig,
) -> Result<Option<Image>, Error> {
    let mut images: Vec<(ImageFormat, Image)> = Vec::new();
    let mut first = None;
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
            Export::Oci { dest, tar, format } => {
                kiln_export::export_oci(cx.store, &image_for(format)?, cx.tags, dest, *tar)?
            }
            Export::Docker { dest, format } => {
                kiln_export::export_docker(cx.store, &image_for(format)?, cx.tags, dest)?
            }
            Export::Load { format } => {
                kiln_export::load_docker(cx.store, &image_for(format)?, cx.tags)?
            }
            Export::Registry { names, format } => push(
                cx.store,
                cx.registry,
                cx.handle,
                &image_for(format)?,
                names,
                cx.progress,
            )?,
            Export::Local { dest } => kiln_export::export_local(cx.store, snapshot, dest)?,
            Export::Tar { dest } => kiln_export::export_tar(cx.store, snapshot, dest)?,
        }
    }
    Ok(first)
}
