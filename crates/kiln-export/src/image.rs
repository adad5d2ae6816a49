use kiln_snapshot::{Compression, LayerBlob, Snapshot, Store};
use kiln_types::image::{
    Descriptor, History, ImageConfig, Manifest, MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST,
};
use kiln_types::Digest;

use crate::Result;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageOptions {
    /// Compression of the layer blobs.
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH` (seconds): the image's and its history's `created` time, as
    /// BuildKit sets them, so that the config does not depend on when the build ran.
    pub source_date_epoch: Option<u64>,
    /// `rewrite-timestamp=true`: clamp the file times in the layers to `source_date_epoch`.
    pub rewrite_timestamp: bool,
}

impl ImageOptions {
    /// Plain gzip layers, no epoch.
    pub fn gzip() -> Self {
        ImageOptions {
            compression: Compression::Gzip,
            source_date_epoch: None,
            rewrite_timestamp: false,
        }
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
    let clamp = options
        .source_date_epoch
        .filter(|_| options.rewrite_timestamp);
    let layers = snapshot
        .layers
        .iter()
        .map(|l| store.layer_blob_clamped(l, options.compression, clamp))
        .collect::<Result<Vec<_>, _>>()?;
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
    let manifest_doc = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.to_owned()),
        config: Descriptor::new(MEDIA_TYPE_CONFIG, config_digest, config_bytes.len() as u64),
        layers: layers
            .iter()
            .map(|l| Descriptor::new(&l.media_type, l.digest, l.size))
            .collect(),
        annotations: Default::default(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest_doc).expect("manifest always serializes");
    let manifest_digest = store.write_blob(&manifest_bytes)?;
    Ok(Image {
        manifest: Descriptor::new(
            MEDIA_TYPE_MANIFEST,
            manifest_digest,
            manifest_bytes.len() as u64,
        ),
        manifest_doc,
        config,
        layers,
    })
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
