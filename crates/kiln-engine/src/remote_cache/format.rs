//! BuildKit's cache manifest format (`cache/remotecache/v1`): a config blob of media type
//! `application/vnd.buildkit.cacheconfig.v0` listing layer blobs (each with its parent) and
//! records (a cache key, links to the records of its inputs, and the top layer of its result),
//! named by an OCI index (or, with `image-manifest=true`, an image manifest) beside the layer
//! descriptors.
//!
//! kiln writes its own cache keys as the record digests (see docs/cache.md for why a BuildKit
//! cache is read but never hits), and reads only `digest` → result chain back.

use std::collections::{BTreeMap, HashMap};

use kiln_types::image::{Descriptor, Index, Manifest, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use kiln_types::Digest;
use serde::{Deserialize, Serialize};

/// Media type of the cache config blob.
pub(crate) const MEDIA_TYPE_CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";
/// Media type of a cache manifest list with `oci-mediatypes=false`.
pub(crate) const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// The layer descriptor annotation holding the diff id, as BuildKit (and containerd) write it.
pub(crate) const ANNOTATION_UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// The cache config blob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CacheConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<CacheLayer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<CacheRecord>,
}

/// One layer blob and the index of its parent layer (-1: none), so that a chain of layers is
/// shared between the records whose results extend each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CacheLayer {
    pub blob: Digest,
    /// BuildKit writes `parent` with `omitempty`: a missing value is layer 0, and -1 is none.
    #[serde(default)]
    pub parent: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<LayerAnnotations>,
}

/// What BuildKit records of a layer beside its blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LayerAnnotations {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(rename = "diffID", default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One cache record: a key, its inputs (per input, the records it may link to) and results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CacheRecord {
    #[serde(rename = "layers", default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<CacheResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Vec<CacheInput>>,
}

/// A record's result: its top layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CacheResult {
    #[serde(rename = "layer")]
    pub layer: i64,
}

/// A link from a record to the record of one of its inputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CacheInput {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    pub link: i64,
}

/// A layer blob as a cache names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LayerRef {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Digest of the uncompressed tar, when the cache says it.
    pub diff_id: Option<Digest>,
}

/// A parsed cache: each record's key and the top layer of its result, and the layer table.
/// A record's chain of layers is walked only when it is asked for, so that a hostile config of
/// many records with long chains costs its own size in memory, never records × depth.
#[derive(Debug)]
pub(crate) struct Parsed {
    config: CacheConfig,
    layers: HashMap<Digest, Descriptor>,
    tops: HashMap<Digest, i64>,
    /// The manifest's cache mount blobs (kiln's media type, `mounts.rs`).
    pub mounts: Vec<Descriptor>,
}

impl Parsed {
    /// The records of `config` whose digest is a digest and that have a result (the first
    /// record of a key wins); `layers` describes the blobs.
    pub(crate) fn new(mut config: CacheConfig, layers: HashMap<Digest, Descriptor>) -> Self {
        let mut tops = HashMap::new();
        for rec in std::mem::take(&mut config.records) {
            let Some(key) = rec.digest.as_deref().and_then(|d| d.parse::<Digest>().ok()) else {
                continue;
            };
            if let Some(result) = rec.results.first() {
                tops.entry(key).or_insert(result.layer);
            }
        }
        Parsed {
            config,
            layers,
            tops,
            mounts: Vec::new(),
        }
    }

    /// With the cache mount blobs the manifest lists.
    pub(crate) fn with_mounts(mut self, mounts: Vec<Descriptor>) -> Self {
        self.mounts = mounts;
        self
    }

    /// The keys of the records.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Digest> {
        self.tops.keys()
    }

    /// The layers of `key`'s result, base first; `None` when there is no such record or its
    /// chain is broken (an index out of range, parents that loop, a blob not described): a
    /// record that cannot be used is a miss, never an error.
    pub(crate) fn chain(&self, key: &Digest) -> Option<Vec<LayerRef>> {
        chain(&self.config, &self.layers, *self.tops.get(key)?)
    }
}

/// What a cache manifest names: the config blob, the layer blobs by digest, and kiln's cache
/// mount blobs (a list: two mounts may hold the same bytes).
pub(crate) type ManifestParts = (Descriptor, HashMap<Digest, Descriptor>, Vec<Descriptor>);

/// Reads a cache manifest (an index or, `image-manifest=true`, an image manifest) and returns
/// the config blob's descriptor, the layer descriptors by digest and the cache mount blobs.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<ManifestParts, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        config: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| format!("not a cache manifest: {e}"))?;
    let is_manifest = probe.media_type.as_deref() == Some(MEDIA_TYPE_MANIFEST)
        || (probe.media_type.is_none() && probe.config.is_some());
    let descriptors: Vec<Descriptor> = if is_manifest {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a cache manifest: {e}"))?;
        std::iter::once(m.config).chain(m.layers).collect()
    } else {
        let i: Index =
            serde_json::from_slice(bytes).map_err(|e| format!("not a cache manifest: {e}"))?;
        i.manifests
    };
    let config = descriptors
        .iter()
        .find(|d| d.media_type == MEDIA_TYPE_CACHE_CONFIG)
        .cloned()
        .ok_or_else(|| format!("no {MEDIA_TYPE_CACHE_CONFIG} blob: not a build cache"))?;
    let (mounts, descriptors): (Vec<Descriptor>, Vec<Descriptor>) = descriptors
        .into_iter()
        .partition(|d| d.media_type == super::mounts::MEDIA_TYPE_CACHE_MOUNT);
    let layers = descriptors
        .into_iter()
        .filter(|d| d.media_type != MEDIA_TYPE_CACHE_CONFIG)
        .map(|d| (d.digest, d))
        .collect();
    Ok((config, layers, mounts))
}

/// The layers from the base up to layer `top`; `None` when an index is out of range, the
/// parents loop, or a blob is not described.
fn chain(
    config: &CacheConfig,
    layers: &HashMap<Digest, Descriptor>,
    top: i64,
) -> Option<Vec<LayerRef>> {
    let mut chain = Vec::new();
    let mut at = top;
    while at >= 0 {
        // More steps than layers: the parents loop.
        if chain.len() >= config.layers.len() {
            return None;
        }
        let layer = config.layers.get(usize::try_from(at).ok()?)?;
        let desc = layers.get(&layer.blob)?;
        let note = layer.annotations.as_ref();
        chain.push(LayerRef {
            digest: layer.blob,
            media_type: desc.media_type.clone(),
            size: desc.size,
            diff_id: desc
                .annotations
                .get(ANNOTATION_UNCOMPRESSED)
                .and_then(|d| d.parse().ok())
                .or_else(|| note.and_then(|n| n.diff_id)),
        });
        at = layer.parent;
    }
    chain.reverse();
    Some(chain)
}

/// Builds a cache config from records: each is a key, its layers base first, and the keys of
/// its inputs (linked when they are records too). Layer chains are shared.
pub(crate) fn build_config(records: &[(Digest, Vec<LayerRef>, Vec<Digest>)]) -> CacheConfig {
    let mut config = CacheConfig::default();
    let mut layer_index: BTreeMap<(Digest, i64), i64> = BTreeMap::new();
    let record_index: HashMap<Digest, i64> = records
        .iter()
        .enumerate()
        .map(|(i, (k, _, _))| (*k, i as i64))
        .collect();
    for (key, layers, inputs) in records {
        let mut parent = -1;
        for l in layers {
            parent = *layer_index.entry((l.digest, parent)).or_insert_with(|| {
                config.layers.push(CacheLayer {
                    blob: l.digest,
                    parent,
                    annotations: Some(LayerAnnotations {
                        media_type: l.media_type.clone(),
                        diff_id: l.diff_id,
                        size: l.size,
                    }),
                });
                config.layers.len() as i64 - 1
            });
        }
        config.records.push(CacheRecord {
            results: if parent >= 0 {
                vec![CacheResult { layer: parent }]
            } else {
                Vec::new()
            },
            digest: Some(key.to_string()),
            inputs: inputs
                .iter()
                .filter_map(|k| record_index.get(k))
                .map(|&link| {
                    vec![CacheInput {
                        selector: String::new(),
                        link,
                    }]
                })
                .collect(),
        });
    }
    config
}

/// The cache manifest naming `config` and `layers`: an index (BuildKit's default), or an image
/// manifest whose config is the cache config (`image-manifest=true`).
pub(crate) fn manifest(
    config: Descriptor,
    layers: Vec<Descriptor>,
    image_manifest: bool,
    oci: bool,
) -> (String, Vec<u8>) {
    if image_manifest {
        let m = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.to_owned()),
            config,
            layers,
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&m).expect("a manifest always serializes");
        (MEDIA_TYPE_MANIFEST.to_owned(), bytes)
    } else {
        let media_type = if oci {
            MEDIA_TYPE_INDEX
        } else {
            MEDIA_TYPE_DOCKER_LIST
        };
        let i = Index {
            schema_version: 2,
            media_type: Some(media_type.to_owned()),
            manifests: layers.into_iter().chain(std::iter::once(config)).collect(),
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&i).expect("an index always serializes");
        (media_type.to_owned(), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> LayerRef {
        LayerRef {
            digest: Digest::of(&[n]),
            media_type: kiln_types::image::MEDIA_TYPE_LAYER_GZIP.to_owned(),
            size: u64::from(n) + 10,
            diff_id: Some(Digest::of(&[n, n])),
        }
    }

    fn descriptors(layers: &[LayerRef]) -> HashMap<Digest, Descriptor> {
        layers
            .iter()
            .map(|l| {
                let mut d = Descriptor::new(&l.media_type, l.digest, l.size);
                if let Some(id) = l.diff_id {
                    d.annotations
                        .insert(ANNOTATION_UNCOMPRESSED.to_owned(), id.to_string());
                }
                (l.digest, d)
            })
            .collect()
    }

    #[test]
    fn chains_are_shared_and_read_back() {
        let (k1, k2, k3) = (Digest::of(b"1"), Digest::of(b"2"), Digest::of(b"3"));
        let recs = vec![
            (k1, vec![layer(1)], vec![]),
            (k2, vec![layer(1), layer(2)], vec![k1]),
            // Another stage on the same base.
            (
                k3,
                vec![layer(1), layer(3)],
                vec![k1, Digest::of(b"not exported")],
            ),
        ];
        let config = build_config(&recs);
        assert_eq!(config.layers.len(), 3, "layer 1 is shared: {config:?}");
        assert_eq!(
            config.records[1].inputs,
            vec![vec![CacheInput {
                selector: String::new(),
                link: 0
            }]]
        );
        assert_eq!(
            config.records[2].inputs.len(),
            1,
            "unexported inputs are not linked"
        );
        // Through JSON, as written and read.
        let json = serde_json::to_vec(&config).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"parent\":-1"), "{text}");
        assert!(text.contains("\"diffID\""), "{text}");
        let back: CacheConfig = serde_json::from_slice(&json).unwrap();
        let read = Parsed::new(back, descriptors(&[layer(1), layer(2), layer(3)]));
        assert_eq!(read.keys().count(), 3);
        assert_eq!(read.chain(&k1), Some(vec![layer(1)]));
        assert_eq!(read.chain(&k2), Some(vec![layer(1), layer(2)]));
        assert_eq!(read.chain(&k3), Some(vec![layer(1), layer(3)]));
    }

    #[test]
    fn broken_records_are_skipped_not_fatal() {
        let good = Digest::of(b"good");
        let mut config = build_config(&[(good, vec![layer(1)], vec![])]);
        // A loop of parents, a layer out of range, a digest that is none, a blob not described.
        config.layers.push(CacheLayer {
            blob: layer(2).digest,
            parent: 1,
            annotations: None,
        });
        for (digest, top) in [
            (Digest::of(b"loop").to_string(), 1),
            (Digest::of(b"range").to_string(), 9),
            ("sha256:nothex".to_owned(), 0),
        ] {
            config.records.push(CacheRecord {
                results: vec![CacheResult { layer: top }],
                digest: Some(digest),
                inputs: vec![],
            });
        }
        let usable = |p: &Parsed| {
            let mut keys: Vec<Digest> =
                p.keys().filter(|k| p.chain(k).is_some()).copied().collect();
            keys.sort();
            keys
        };
        let read = Parsed::new(config.clone(), descriptors(&[layer(1), layer(2)]));
        assert_eq!(usable(&read), [good]);
        assert_eq!(
            read.keys().count(),
            3,
            "the record without a digest is no record"
        );
        let read = Parsed::new(config, HashMap::new());
        assert!(usable(&read).is_empty(), "undescribed blobs are no result");
    }

    #[test]
    fn manifests_of_both_kinds_name_the_config() {
        let cfg = Descriptor::new(MEDIA_TYPE_CACHE_CONFIG, Digest::of(b"cfg"), 3);
        let l = descriptors(&[layer(1)]).into_values().collect::<Vec<_>>();
        for image_manifest in [false, true] {
            let (mt, bytes) = manifest(cfg.clone(), l.clone(), image_manifest, true);
            assert_eq!(mt == MEDIA_TYPE_MANIFEST, image_manifest);
            let (c, layers, _) = parse_manifest(&bytes).unwrap();
            assert_eq!(c, cfg);
            assert_eq!(layers.len(), 1);
        }
        let (mt, _) = manifest(cfg, l, false, false);
        assert_eq!(mt, MEDIA_TYPE_DOCKER_LIST);
        let err = parse_manifest(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap_err();
        assert!(err.contains("not a build cache"), "{err}");
    }
}
