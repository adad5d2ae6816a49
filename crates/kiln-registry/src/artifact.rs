//! kiln plugins as OCI artifacts (`kiln plugins push`, `# syntax=REF@sha256:…`): an image
//! index with one manifest per platform; each manifest has the plugin's manifest JSON as its
//! config and the plugin library as its one layer, under media types of kiln's own so that no
//! image tool mistakes it for a runnable image (the OCI 1.1 artifact guidance).
//!
//! Pulling verifies every document and blob against the digest that names it, down from the
//! pinned index: a library is native code that will run inside kiln.

use std::collections::BTreeMap;

use kiln_snapshot::Store;
use kiln_types::image::{Descriptor, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use kiln_types::{Digest, Platform, PlatformMatcher};
use serde::{Deserialize, Serialize};

use crate::select::MAX_MANIFEST_SIZE;
use crate::{Error, Op, Reference, Registry};

/// The `artifactType` of a kiln plugin's index and manifests.
pub const PLUGIN_ARTIFACT_TYPE: &str = "application/vnd.kiln.plugin.v1";
/// The config of a plugin manifest: the plugin's manifest JSON, as its probe gives it.
pub const PLUGIN_CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.plugin.config.v1+json";
/// The one layer of a plugin manifest: the library (`.so`) bytes, as they are.
pub const PLUGIN_LIBRARY_MEDIA_TYPE: &str = "application/vnd.kiln.plugin.library.v1";
/// The largest plugin library kiln pulls (the bundled ones are a few MiB to tens of MiB, debug
/// builds included); it is read into memory to be verified before anything is written.
pub const MAX_PLUGIN_LIBRARY_SIZE: u64 = 256 << 20;
/// The largest plugin config (a manifest JSON of a few hundred bytes).
const MAX_PLUGIN_CONFIG_SIZE: u64 = 1 << 20;

/// An OCI image manifest with `artifactType` (kiln-types' `Manifest` has no such member, and
/// the documents kiln writes must carry it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactManifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MEDIA_TYPE_MANIFEST`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// [`PLUGIN_ARTIFACT_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The plugin manifest JSON.
    pub config: Descriptor,
    /// The library, alone.
    pub layers: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index with `artifactType`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactIndex {
    /// Always 2.
    pub schema_version: u32,
    /// [`MEDIA_TYPE_INDEX`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// [`PLUGIN_ARTIFACT_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// One manifest per platform, each with its platform.
    pub manifests: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The manifest of one platform's plugin: `config` (the plugin manifest JSON) and `library`.
pub fn plugin_manifest(config: &Descriptor, library: &Descriptor) -> Vec<u8> {
    let m = ArtifactManifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.to_owned()),
        artifact_type: Some(PLUGIN_ARTIFACT_TYPE.to_owned()),
        config: config.clone(),
        layers: vec![library.clone()],
        annotations: BTreeMap::new(),
    };
    serde_json::to_vec(&m).expect("a manifest of strings and numbers serializes")
}

/// The index over per-platform plugin manifests (each descriptor with its platform).
pub fn plugin_index(manifests: Vec<Descriptor>) -> Vec<u8> {
    let i = ArtifactIndex {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_INDEX.to_owned()),
        artifact_type: Some(PLUGIN_ARTIFACT_TYPE.to_owned()),
        manifests,
        annotations: BTreeMap::new(),
    };
    serde_json::to_vec(&i).expect("an index of strings and numbers serializes")
}

/// Reads a plugin index: an OCI index whose artifact type is kiln's plugin type.
pub fn parse_plugin_index(bytes: &[u8]) -> Result<ArtifactIndex, String> {
    let i: ArtifactIndex =
        serde_json::from_slice(bytes).map_err(|e| format!("not an OCI image index ({e})"))?;
    if i.media_type
        .as_deref()
        .is_some_and(|m| m != MEDIA_TYPE_INDEX)
    {
        return Err(format!(
            "an index of media type {:?}, not {MEDIA_TYPE_INDEX}",
            i.media_type.as_deref().unwrap_or_default()
        ));
    }
    if i.artifact_type.as_deref() != Some(PLUGIN_ARTIFACT_TYPE) {
        return Err(format!(
            "not a kiln plugin (artifactType {}, a plugin has {PLUGIN_ARTIFACT_TYPE}; \
             `kiln plugins push` publishes one)",
            i.artifact_type
                .as_deref()
                .map_or_else(|| "missing".to_owned(), |t| format!("{t:?}"))
        ));
    }
    Ok(i)
}

/// Reads one platform's plugin manifest: its config and library descriptors.
pub fn parse_plugin_manifest(bytes: &[u8]) -> Result<(Descriptor, Descriptor), String> {
    let m: ArtifactManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not an OCI image manifest ({e})"))?;
    if m.config.media_type != PLUGIN_CONFIG_MEDIA_TYPE {
        return Err(format!(
            "its config has media type {:?}, a plugin's is {PLUGIN_CONFIG_MEDIA_TYPE}",
            m.config.media_type
        ));
    }
    let [layer] = &m.layers[..] else {
        return Err(format!(
            "{} layers, a plugin manifest has exactly one (the library)",
            m.layers.len()
        ));
    };
    if layer.media_type != PLUGIN_LIBRARY_MEDIA_TYPE {
        return Err(format!(
            "its layer has media type {:?}, a plugin library's is {PLUGIN_LIBRARY_MEDIA_TYPE}",
            layer.media_type
        ));
    }
    Ok((m.config, layer.clone()))
}

/// A plugin pulled for one platform: every byte verified from the pinned index down.
#[derive(Clone, Debug)]
pub struct PulledPlugin {
    /// The reference pulled, pinned to the index digest.
    pub reference: Reference,
    /// The index, as served (its digest is `reference.digest`).
    pub index: Vec<u8>,
    /// The chosen platform's manifest descriptor (with its platform).
    pub manifest_desc: Descriptor,
    /// That manifest, as served.
    pub manifest: Vec<u8>,
    /// The config: the plugin's manifest JSON as the publisher's probe gave it.
    pub config: Vec<u8>,
    /// The library descriptor.
    pub library_desc: Descriptor,
    /// The library bytes.
    pub library: Vec<u8>,
}

/// What `push_plugin` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedPlugin {
    /// The digest of the index now at the tag: what `# syntax=REF@…` pins.
    pub index_digest: Digest,
    /// The digest of the pushed platform's manifest.
    pub manifest_digest: Digest,
    /// Every platform the index now holds, in index order.
    pub platforms: Vec<Platform>,
}

impl Registry {
    /// The digest of the document `r` names now (a tag's current target).
    pub async fn resolve_digest(&self, r: &Reference) -> Result<Digest, Error> {
        Ok(self.inner.fetch_manifest(r).await?.0)
    }

    /// Pulls the plugin pinned by `r`'s digest for `platform` (containerd's platform matching:
    /// the best one a `platform` machine runs), verifying the index, the manifest, the config
    /// and the library against their digests and sizes. Nothing is written anywhere.
    pub async fn pull_plugin(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<PulledPlugin, Error> {
        let image = r.to_string();
        let bad = |why: String| Error::BadDocument {
            op: Op::Resolve,
            image: image.clone(),
            why,
        };
        if r.digest.is_none() {
            return Err(bad(
                "a plugin is pulled by digest only (REF@sha256:…)".to_owned()
            ));
        }
        // Verified against `r`'s digest by the fetch.
        let (_, index) = self.inner.fetch_manifest(r).await?;
        let parsed = parse_plugin_index(&index).map_err(&bad)?;
        let matcher = PlatformMatcher::only(platform);
        // Entries without a platform cannot be matched: a plugin is native code of one.
        let (positions, platforms): (Vec<usize>, Vec<Platform>) = parsed
            .manifests
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((i, d.platform.clone()?)))
            .unzip();
        let Some(best) = matcher.best(platforms.iter()).map(|b| positions[b]) else {
            return Err(Error::NoMatchingPlatform {
                image,
                wanted: platform.to_string(),
                available: platforms.iter().map(ToString::to_string).collect(),
            });
        };
        let manifest_desc = parsed.manifests[best].clone();
        if manifest_desc.size > MAX_MANIFEST_SIZE {
            return Err(bad(format!(
                "manifest {} is {} bytes, more than the {MAX_MANIFEST_SIZE} allowed",
                manifest_desc.digest, manifest_desc.size
            )));
        }
        let at = |digest: Digest| Reference {
            digest: Some(digest),
            ..r.clone()
        };
        let (_, manifest) = self.inner.fetch_manifest(&at(manifest_desc.digest)).await?;
        if manifest.len() as u64 != manifest_desc.size {
            return Err(bad(format!(
                "manifest {} is {} bytes, the index says {}",
                manifest_desc.digest,
                manifest.len(),
                manifest_desc.size
            )));
        }
        let (config_desc, library_desc) = parse_plugin_manifest(&manifest)
            .map_err(|why| bad(format!("manifest {}: {why}", manifest_desc.digest)))?;
        let config = self
            .inner
            .read_blob(r, &config_desc, MAX_PLUGIN_CONFIG_SIZE)
            .await?;
        let library = self
            .inner
            .read_blob(r, &library_desc, MAX_PLUGIN_LIBRARY_SIZE)
            .await?;
        // `read_blob` stops at the descriptor's size and checks the digest; a shorter body
        // cannot have the digest either, but say so plainly if a registry truncates.
        if library.len() as u64 != library_desc.size {
            return Err(bad(format!(
                "library {} is {} bytes, its descriptor says {}",
                library_desc.digest,
                library.len(),
                library_desc.size
            )));
        }
        Ok(PulledPlugin {
            reference: r.clone(),
            index,
            manifest_desc,
            manifest,
            config,
            library_desc,
            library,
        })
    }

    /// Publishes a plugin library for `platform` at `target` (a tag): the config (the plugin's
    /// manifest JSON) and the library go into `store` then up to the registry, then the
    /// platform's manifest, then the index at the tag. A plugin index already at the tag keeps
    /// its other platforms (the one for `platform` is replaced), as `docker buildx imagetools
    /// create --append` would; anything else at the tag is replaced.
    pub async fn push_plugin(
        &self,
        target: &Reference,
        platform: &Platform,
        config: &[u8],
        library: &[u8],
        store: &Store,
    ) -> Result<PushedPlugin, Error> {
        let image = target.to_string();
        let store_err = |source| Error::Store {
            op: Op::Push,
            image: image.clone(),
            source,
        };
        if target.digest.is_some() {
            return Err(Error::BadDocument {
                op: Op::Push,
                image: image.clone(),
                why: "push to a tag; the digest is what the push prints".to_owned(),
            });
        }
        let config_digest = store.write_blob(config).map_err(&store_err)?;
        let library_digest = store.write_blob(library).map_err(&store_err)?;
        let config_desc =
            Descriptor::new(PLUGIN_CONFIG_MEDIA_TYPE, config_digest, config.len() as u64);
        let library_desc = Descriptor::new(
            PLUGIN_LIBRARY_MEDIA_TYPE,
            library_digest,
            library.len() as u64,
        );
        let manifest = plugin_manifest(&config_desc, &library_desc);
        let manifest_digest = Digest::of(&manifest);
        let by_digest = Reference {
            digest: Some(manifest_digest),
            ..target.clone()
        };
        self.inner
            .push(
                &by_digest,
                &[
                    (config_digest, config.len() as u64),
                    (library_digest, library.len() as u64),
                ],
                &manifest,
                MEDIA_TYPE_MANIFEST,
                store,
            )
            .await?;
        let mut entry =
            Descriptor::new(MEDIA_TYPE_MANIFEST, manifest_digest, manifest.len() as u64);
        entry.platform = Some(platform.normalize());
        let mut manifests = self.existing_plugin_entries(target).await?;
        let wanted = PlatformMatcher::strict(platform);
        manifests.retain(|d| !d.platform.as_ref().is_some_and(|p| wanted.matches(p)));
        manifests.push(entry);
        let platforms = manifests
            .iter()
            .filter_map(|d| d.platform.clone())
            .collect();
        let index = plugin_index(manifests);
        let index_digest = self
            .inner
            .put_manifest(target, &index, MEDIA_TYPE_INDEX)
            .await?;
        Ok(PushedPlugin {
            index_digest,
            manifest_digest,
            platforms,
        })
    }

    /// The manifests of the plugin index at `target`'s tag; none when the tag does not exist
    /// or holds something else (which the push replaces).
    async fn existing_plugin_entries(&self, target: &Reference) -> Result<Vec<Descriptor>, Error> {
        match self.inner.fetch_manifest(target).await {
            Ok((_, bytes)) => Ok(parse_plugin_index(&bytes)
                .map(|i| i.manifests)
                .unwrap_or_default()),
            Err(e) if e.category() == crate::Category::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media: &str, content: &[u8]) -> Descriptor {
        Descriptor::new(media, Digest::of(content), content.len() as u64)
    }

    #[test]
    fn documents_round_trip_with_kiln_media_types() {
        let config = desc(PLUGIN_CONFIG_MEDIA_TYPE, b"{\"name\":\"x\"}");
        let library = desc(PLUGIN_LIBRARY_MEDIA_TYPE, b"\x7fELF...");
        let manifest = plugin_manifest(&config, &library);
        let v: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(v["artifactType"], PLUGIN_ARTIFACT_TYPE);
        assert_eq!(v["config"]["mediaType"], PLUGIN_CONFIG_MEDIA_TYPE);
        assert_eq!(v["layers"][0]["mediaType"], PLUGIN_LIBRARY_MEDIA_TYPE);
        assert_eq!(
            parse_plugin_manifest(&manifest).unwrap(),
            (config.clone(), library.clone())
        );

        let mut entry = desc(MEDIA_TYPE_MANIFEST, &manifest);
        entry.platform = Some("linux/amd64".parse().unwrap());
        let index = plugin_index(vec![entry.clone()]);
        let v: serde_json::Value = serde_json::from_slice(&index).unwrap();
        assert_eq!(v["mediaType"], MEDIA_TYPE_INDEX);
        assert_eq!(v["artifactType"], PLUGIN_ARTIFACT_TYPE);
        assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
        assert_eq!(parse_plugin_index(&index).unwrap().manifests, vec![entry]);
    }

    #[test]
    fn images_and_odd_manifests_are_not_plugins() {
        let image_index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let err = parse_plugin_index(image_index).unwrap_err();
        assert!(
            err.contains("not a kiln plugin (artifactType missing"),
            "{err}"
        );
        assert!(parse_plugin_index(b"not json").is_err());

        let config = desc(PLUGIN_CONFIG_MEDIA_TYPE, b"{}");
        let library = desc(PLUGIN_LIBRARY_MEDIA_TYPE, b"lib");
        let image_config = desc("application/vnd.oci.image.config.v1+json", b"{}");
        let err = parse_plugin_manifest(&plugin_manifest(&image_config, &library)).unwrap_err();
        assert!(err.contains("config has media type"), "{err}");
        let tar = desc("application/vnd.oci.image.layer.v1.tar", b"lib");
        let err = parse_plugin_manifest(&plugin_manifest(&config, &tar)).unwrap_err();
        assert!(err.contains("layer has media type"), "{err}");
        let mut two: ArtifactManifest =
            serde_json::from_slice(&plugin_manifest(&config, &library)).unwrap();
        two.layers.push(library.clone());
        let err = parse_plugin_manifest(&serde_json::to_vec(&two).unwrap()).unwrap_err();
        assert!(err.starts_with("2 layers"), "{err}");
    }
}
