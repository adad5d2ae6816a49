use std::io::Write;

use kiln_snapshot::{Compression, LayerBlob, LayerId, Snapshot, Store};
use kiln_types::image::{Descriptor, History, ImageConfig, Manifest};
use kiln_types::Digest;

use crate::format::{CompressionKind, ImageFormat};
use crate::{Error, Result};

/// An image whose blobs are all in the store.
#[derive(Clone, Debug)]
pub struct Image {
    /// Manifest descriptor (its digest is the image digest).
    pub manifest: Descriptor,
    /// The manifest.
    pub manifest_doc: Manifest,
    /// The final config.
    pub config: ImageConfig,
    /// Layer blobs, base first.
    pub layers: Vec<LayerBlob>,
}

impl Image {
    /// Every blob the image consists of: layers, config, manifest.
    pub fn blobs(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self.layers.iter().map(|l| l.digest).collect();
        v.push(self.manifest_doc.config.digest);
        v.push(self.manifest.digest);
        v
    }
}

/// How an image is assembled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageOptions {
    /// Compression, media types, annotations, `rewrite-timestamp`.
    pub format: ImageFormat,
    /// `SOURCE_DATE_EPOCH` (seconds): the image's and its history's `created` time, as
    /// BuildKit sets them, so that the config does not depend on when the build ran.
    pub source_date_epoch: Option<u64>,
}

impl ImageOptions {
    /// Plain gzip layers with OCI media types, no epoch.
    pub fn gzip() -> Self {
        ImageOptions::default()
    }
}

/// Computes the layer blobs of `snapshot`, fills `rootfs.diff_ids`, reconciles `history` with
/// the layers, and stores config and manifest blobs.
pub fn assemble_image(
    store: &Store,
    snapshot: &Snapshot,
    mut config: ImageConfig,
    options: ImageOptions,
) -> Result<Image> {
    let format = &options.format;
    let placed = format.validate(&config.platform())?;
    let clamp = options
        .source_date_epoch
        .filter(|_| format.rewrite_timestamp);
    let layers = snapshot
        .layers
        .iter()
        .map(|l| layer_blob(store, l, format, clamp))
        .collect::<Result<Vec<_>>>()?;
    config.rootfs.kind = "layers".to_owned();
    config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id).collect();
    config.history = normalize_history(std::mem::take(&mut config.history), layers.len());
    if let Some(epoch) = options.source_date_epoch {
        let created = kiln_types::image::rfc3339_utc(i64::try_from(epoch).unwrap_or(i64::MAX));
        config.created = Some(created.clone());
        // As BuildKit: history times after the epoch (or missing) become the epoch; older
        // ones, from a base image, stay.
        for h in &mut config.history {
            if !h
                .created
                .as_deref()
                .is_some_and(|c| utc_before(c, &created))
            {
                h.created = Some(created.clone());
            }
        }
    }

    let config_bytes = serde_json::to_vec(&config).expect("image config always serializes");
    let config_digest = store.write_blob(&config_bytes)?;
    let (manifest_type, config_type) = format.manifest_types();
    let manifest_doc = Manifest {
        schema_version: 2,
        media_type: Some(manifest_type.to_owned()),
        config: Descriptor::new(config_type, config_digest, config_bytes.len() as u64),
        layers: layers
            .iter()
            .map(|l| Descriptor::new(&l.media_type, l.digest, l.size))
            .collect(),
        annotations: placed.manifest,
    };
    let manifest_bytes = serde_json::to_vec(&manifest_doc).expect("manifest always serializes");
    let manifest_digest = store.write_blob(&manifest_bytes)?;
    let mut manifest = Descriptor::new(manifest_type, manifest_digest, manifest_bytes.len() as u64);
    manifest.annotations = placed.manifest_descriptor;
    Ok(Image {
        manifest,
        manifest_doc,
        config,
        layers,
    })
}

/// The blob of layer `id` in `format`, as BuildKit picks it: a layer that came from a base
/// image keeps the blob it was pulled as unless `force-compression`; a layer of this build is
/// compressed as asked. The store keeps gzip and plain-tar blobs of a layer; a zstd blob or a
/// chosen gzip level is made here from the plain tar.
fn layer_blob(
    store: &Store,
    id: &LayerId,
    format: &ImageFormat,
    clamp: Option<u64>,
) -> Result<LayerBlob> {
    let stored = |c| store.layer_blob_clamped(id, c, clamp);
    let mut blob = match (format.compression, format.compression_level) {
        (CompressionKind::Gzip, None) => stored(Compression::Gzip)?,
        (kind, level) => {
            // Pulled layers are the ones indexed by diff id; their gzip blob is the pulled one.
            let gzip = stored(Compression::Gzip)?;
            let pulled = store
                .layer_by_diff_id(&gzip.diff_id)?
                .is_some_and(|l| &l == id);
            if pulled && !format.force_compression {
                gzip
            } else if kind == CompressionKind::Uncompressed {
                stored(Compression::Uncompressed)?
            } else {
                compress(store, &stored(Compression::Uncompressed)?, kind, level)?
            }
        }
    };
    blob.media_type = format
        .layer_media_type(&blob.media_type)
        .ok_or_else(|| {
            Error::Options(format!(
                "layer {} is {}, which has no counterpart in docker media types: use \
                 oci-mediatypes=true, or force-compression=true with compression=gzip",
                blob.digest, blob.media_type
            ))
        })?
        .to_owned();
    Ok(blob)
}

/// Compresses the plain tar blob `tar` with `kind` (zstd, or gzip) at `level` into a new blob.
fn compress(
    store: &Store,
    tar: &LayerBlob,
    kind: CompressionKind,
    level: Option<i32>,
) -> Result<LayerBlob> {
    let path = store.blob_path(&tar.digest);
    let io = |e: std::io::Error| crate::io_err(&path)(e);
    // Read verified: a blob made from a changed one would carry the damage under a digest of
    // its own, which no later check could catch.
    let mut input = std::io::BufReader::new(store.open_blob_verified(&tar.digest)?);
    let mut out = store.blob_writer()?;
    let media_type = if kind == CompressionKind::Zstd {
        // Level 0 is zstd's default (3), as in BuildKit.
        let mut enc =
            zstd::stream::write::Encoder::new(&mut out, level.unwrap_or(0)).map_err(io)?;
        std::io::copy(&mut input, &mut enc).map_err(changed_or(&path))?;
        enc.finish().map_err(io)?;
        kiln_types::image::MEDIA_TYPE_LAYER_ZSTD
    } else {
        let level = level.and_then(|l| u32::try_from(l).ok()).unwrap_or(6);
        let mut enc = flate2::write::GzEncoder::new(&mut out, flate2::Compression::new(level));
        std::io::copy(&mut input, &mut enc).map_err(changed_or(&path))?;
        enc.finish().map_err(io)?;
        kiln_types::image::MEDIA_TYPE_LAYER_GZIP
    };
    out.flush().map_err(io)?;
    let size = out.len();
    let digest = out.commit(None)?;
    Ok(LayerBlob {
        diff_id: tar.diff_id,
        digest,
        size,
        media_type: media_type.to_owned(),
    })
}

/// An error reading a verified blob: the blob's change when that is what it is.
fn changed_or(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| match kiln_snapshot::verify::blob_mismatch(&e) {
        Some(m) => kiln_snapshot::Error::BlobChanged(m.clone()).into(),
        None => crate::io_err(path)(e),
    }
}

/// Makes the non-empty history entries match the layers one to one, as BuildKit's exporter
/// does: missing entries are added for unexplained layers (base layers first), surplus
/// non-empty entries are marked empty from the oldest on.
fn normalize_history(mut history: Vec<History>, layers: usize) -> Vec<History> {
    let non_empty = history.iter().filter(|h| !h.empty_layer).count();
    if non_empty < layers {
        let missing = layers - non_empty;
        let mut added: Vec<History> = (0..missing)
            .map(|_| History {
                created_by: Some("kiln: layer without history".to_owned()),
                ..History::default()
            })
            .collect();
        added.append(&mut history);
        history = added;
    } else if non_empty > layers {
        let mut surplus = non_empty - layers;
        for h in history.iter_mut() {
            if surplus == 0 {
                break;
            }
            if !h.empty_layer {
                h.empty_layer = true;
                surplus -= 1;
            }
        }
    }
    history
}

/// Whether the RFC 3339 UTC time `a` is at or before `b` (both `...Z`; seconds compared as
/// text, which orders them; any other form counts as not before).
fn utc_before(a: &str, b: &str) -> bool {
    let secs = |t: &str| {
        t.ends_with('Z')
            .then(|| t.get(..19))
            .flatten()
            .map(str::to_owned)
    };
    matches!((secs(a), secs(b)), (Some(x), Some(y)) if x <= y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(empty: bool) -> History {
        History {
            empty_layer: empty,
            ..History::default()
        }
    }

    #[test]
    fn history_matches_layer_count() {
        let count = |v: &[History]| v.iter().filter(|h| !h.empty_layer).count();
        assert_eq!(count(&normalize_history(vec![h(true), h(false)], 3)), 3);
        assert_eq!(
            count(&normalize_history(vec![h(false), h(false), h(true)], 1)),
            1
        );
        assert_eq!(normalize_history(vec![h(false)], 1), vec![h(false)]);
    }
}
