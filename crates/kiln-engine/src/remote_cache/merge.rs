//! One registry cache from several: a build spread over a builder's nodes has each node export
//! its platforms' steps under a tag of its own; the client then merges them into the cache the
//! user named, as BuildKit exports every platform's result of one build into one cache
//! manifest. Without it the nodes' exports would replace each other at one tag, and the last
//! node's platforms alone would be found.

use std::path::Path;

use kiln_registry::Registry;
use kiln_snapshot::{SnapshotterKind, Store};
use kiln_types::image::{Descriptor, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use kiln_types::reference::Reference;
use kiln_types::Digest;

use super::format::{self, CacheConfig, MEDIA_TYPE_CACHE_CONFIG};
use super::layout::MAX_CONFIG_BYTES;
use crate::Error;

/// Merges the caches pushed at `parts` (tags of `into`'s repository) into one cache pushed at
/// `into`, in the form of the first (index or image manifest, OCI or docker media types).
/// The layer blobs are in the repository already (the parts' pushes put them there); only the
/// merged config and the manifest go up. `scratch` holds a throwaway store for the config
/// blob. Returns the merged manifest's digest.
pub async fn merge_registry_caches(
    registry: &Registry,
    parts: &[Reference],
    into: &Reference,
    scratch: &Path,
) -> Result<Digest, Error> {
    let fail = |message: String| Error::CacheExport {
        dest: into.to_string(),
        message,
    };
    let store = Store::open_with(scratch, SnapshotterKind::Copy)?;
    let mut configs = Vec::new();
    let mut descriptors: Vec<Descriptor> = Vec::new();
    let mut form = None;
    for part in parts {
        let (_, manifest) = registry.fetch_manifest(part).await?;
        let (config_desc, layers, mounts) = format::parse_manifest(&manifest)
            .map_err(|why| fail(format!("the cache at {part}: {why}")))?;
        if config_desc.size > MAX_CONFIG_BYTES {
            return Err(fail(format!(
                "the cache at {part}: its config is {} bytes, more than kiln reads ({MAX_CONFIG_BYTES})",
                config_desc.size
            )));
        }
        form.get_or_insert_with(|| form_of(&manifest));
        registry
            .fetch_blobs(part, std::slice::from_ref(&config_desc), &store)
            .await?;
        let bytes = store.read_blob(&config_desc.digest)?;
        let config: CacheConfig = serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("the cache config at {part}: {e}")))?;
        configs.push(config);
        // The parts' blobs in their order, each once (platforms may share a base layer).
        let mut theirs: Vec<Descriptor> = layers.into_values().chain(mounts).collect();
        theirs.sort_by_key(|d| d.digest.to_string());
        for d in theirs {
            if !descriptors.iter().any(|o| o.digest == d.digest) {
                descriptors.push(d);
            }
        }
    }
    let (image_manifest, oci) = form.ok_or_else(|| fail("no cache to merge".to_owned()))?;
    let merged = merge_configs(configs);
    let bytes = serde_json::to_vec(&merged).expect("a cache config always serializes");
    let config_desc = Descriptor::new(
        MEDIA_TYPE_CACHE_CONFIG,
        store.write_blob(&bytes)?,
        bytes.len() as u64,
    );
    let mut upload: Vec<(Digest, u64)> = descriptors.iter().map(|d| (d.digest, d.size)).collect();
    upload.push((config_desc.digest, config_desc.size));
    let (media_type, manifest) = format::manifest(config_desc, descriptors, image_manifest, oci);
    Ok(registry
        .push(into, &upload, &manifest, &media_type, &store)
        .await?)
}

/// Whether a cache manifest is an image manifest, and whether it has OCI media types.
fn form_of(manifest: &[u8]) -> (bool, bool) {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
    }
    let media = serde_json::from_slice::<Probe>(manifest)
        .ok()
        .and_then(|p| p.media_type);
    match media.as_deref() {
        Some(MEDIA_TYPE_MANIFEST) => (true, true),
        Some(MEDIA_TYPE_INDEX) | None => (false, true),
        Some(_) => (false, false),
    }
}

/// The records and layers of every config in one: each config's layer and record indexes move
/// past those of the configs before it. Keys of different platforms differ, so nothing is
/// merged away; a key in two parts (a step both built) keeps its first record, as a reader
/// takes the first record of a key.
fn merge_configs(configs: Vec<CacheConfig>) -> CacheConfig {
    let mut merged = CacheConfig::default();
    for config in configs {
        let layer_base = merged.layers.len() as i64;
        let record_base = merged.records.len() as i64;
        merged.layers.extend(config.layers.into_iter().map(|mut l| {
            if l.parent >= 0 {
                l.parent += layer_base;
            }
            l
        }));
        merged
            .records
            .extend(config.records.into_iter().map(|mut r| {
                for result in &mut r.results {
                    result.layer += layer_base;
                }
                for input in r.inputs.iter_mut().flatten() {
                    input.link += record_base;
                }
                r
            }));
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::format::{CacheInput, CacheLayer, CacheRecord, CacheResult};
    use super::*;

    fn layer(n: u8, parent: i64) -> CacheLayer {
        CacheLayer {
            blob: Digest::of(&[n]),
            parent,
            annotations: None,
        }
    }

    fn record(key: &str, layer: i64, links: &[i64]) -> CacheRecord {
        CacheRecord {
            results: vec![CacheResult { layer }],
            digest: Some(Digest::of(key.as_bytes()).to_string()),
            inputs: links
                .iter()
                .map(|&link| {
                    vec![CacheInput {
                        selector: String::new(),
                        link,
                    }]
                })
                .collect(),
        }
    }

    #[test]
    fn merged_configs_keep_each_parts_chains_and_links() {
        let amd64 = CacheConfig {
            layers: vec![layer(1, -1), layer(2, 0)],
            records: vec![record("a1", 0, &[]), record("a2", 1, &[0])],
        };
        let arm64 = CacheConfig {
            layers: vec![layer(3, -1), layer(4, 0)],
            records: vec![record("b1", 0, &[]), record("b2", 1, &[0])],
        };
        let merged = merge_configs(vec![amd64.clone(), arm64]);
        assert_eq!(merged.layers.len(), 4);
        assert_eq!(merged.records.len(), 4);
        // The first part is unchanged.
        assert_eq!(merged.layers[..2], amd64.layers[..]);
        assert_eq!(merged.records[..2], amd64.records[..]);
        // The second part's top layer is blob 4 whose parent is blob 3, and b2 links to b1.
        assert_eq!(merged.layers[3].blob, Digest::of(&[4]));
        assert_eq!(merged.layers[3].parent, 2);
        assert_eq!(merged.layers[2].parent, -1);
        assert_eq!(merged.records[3].results[0].layer, 3);
        assert_eq!(merged.records[3].inputs[0][0].link, 2);
        // Each key reads back the chain it had.
        let descs = |ls: &[CacheLayer]| {
            ls.iter()
                .map(|l| {
                    let d =
                        Descriptor::new("application/vnd.oci.image.layer.v1.tar+gzip", l.blob, 1);
                    (l.blob, d)
                })
                .collect()
        };
        let parsed = format::Parsed::new(merged.clone(), descs(&merged.layers));
        let chain = parsed
            .chain(&Digest::of(b"b2"))
            .expect("b2's chain")
            .iter()
            .map(|l| l.digest)
            .collect::<Vec<_>>();
        assert_eq!(chain, vec![Digest::of(&[3]), Digest::of(&[4])]);
    }

    #[test]
    fn the_form_of_a_cache_manifest_is_kept() {
        assert_eq!(
            form_of(br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#),
            (true, true)
        );
        assert_eq!(
            form_of(br#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#),
            (false, true)
        );
        assert_eq!(
            form_of(
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json"}"#
            ),
            (false, false)
        );
    }
}
