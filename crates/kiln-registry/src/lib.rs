//! Pulls images for `FROM <image>`: resolves a reference (registry or `oci-layout://`
//! directory) to one platform's manifest and config, and puts the layer blobs into the
//! content store. Registry access goes through oci-client (rustls with the ring provider),
//! with credentials from the docker client's configuration, bounded retries, plain http
//! for loopback and `--insecure-registry` hosts, and per-host settings (mirrors tried before
//! the host for pulls, plain http, unverified TLS, CAs and client certificates) as kiln.toml's
//! `[registry."host"]` and docker's `/etc/docker/certs.d` give them (see `tls`).
//!
//! Architecture invariant: a layer-1 crate. Among kiln crates it depends on `kiln-types` and
//! on `kiln-snapshot` (for the blob store) only; it knows nothing of builds, graphs or plugins.

mod artifact;
mod auth;
mod diff_ids;
mod error;
mod imagetools;
mod layout;
mod reference;
mod remote;
mod select;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_snapshot::Store;
use kiln_types::image::{Descriptor, ImageConfig, Manifest};
use kiln_types::{Digest, Platform};

pub use artifact::{
    parse_plugin_index, parse_plugin_manifest, plugin_index, plugin_manifest, ArtifactIndex,
    ArtifactManifest, PulledPlugin, PushedPlugin, MAX_PLUGIN_LIBRARY_SIZE, PLUGIN_ARTIFACT_TYPE,
    PLUGIN_CONFIG_MEDIA_TYPE, PLUGIN_LIBRARY_MEDIA_TYPE,
};
pub use error::{Category, DiffIdMismatch, Error, Op};
pub use imagetools::{media_type_of, BlobCopy, CopyReport};
pub use reference::{is_loopback, ImageRef, LayoutRef, Reference};
pub use select::{parse_config, parse_document, Document, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE};
pub use tls::{KeyPair, DOCKER_CERTS_DIR};

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Registries (`host` or `host:port`) reached over plain http, as docker's
    /// `--insecure-registry`. Loopback registries always are.
    pub insecure: Vec<String>,
    /// The docker configuration directory holding `config.json`; default `$DOCKER_CONFIG`, else
    /// `~/.docker`.
    pub docker_config: Option<PathBuf>,
    /// Settings of registry hosts (`docker.io`, `host:port`), by host.
    pub hosts: BTreeMap<String, HostOptions>,
}

/// How to reach one registry host: BuildKit's `[registry."host"]` of buildkitd.toml.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostOptions {
    /// Mirrors of this host, tried in order before the host itself when pulling (never when
    /// pushing): `host[:port][/path]`, where a path is put before the repository, as BuildKit
    /// does for a mirror like `harbor.example.com/proxy.docker.io`. How a mirror is reached
    /// (http, insecure) is the mirror's own host entry.
    pub mirrors: Vec<String>,
    /// Plain http (`true`) or https (`false`); `None`: plain http for loopback hosts only.
    pub http: Option<bool>,
    /// https without verifying the server's certificate.
    pub insecure: bool,
    /// CA certificate files (PEM) trusted for this host besides the system's, as BuildKit's
    /// `ca`; docker's `/etc/docker/certs.d/HOST/*.crt` are added after them.
    pub ca: Vec<PathBuf>,
    /// Client certificates presented when the host asks for one (the first is presented),
    /// as BuildKit's `keypair`; docker's certs.d `*.cert` + `*.key` come after them.
    pub keypairs: Vec<KeyPair>,
}

/// A registry client: cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<remote::Remote>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// An image narrowed to one platform, with its manifest and config in hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The reference, pinned: the digest of the platform manifest filled in.
    pub reference: ImageRef,
    /// The digest of the platform manifest.
    pub manifest_digest: Digest,
    /// The platform manifest.
    pub manifest: Manifest,
    /// The digest of the config blob (also stored in the store).
    pub config_digest: Digest,
    /// The image config.
    pub config: ImageConfig,
    /// The layer blobs, base first (= `manifest.layers`).
    pub layers: Vec<Descriptor>,
}

impl Registry {
    /// Reads the docker configuration and prepares the http clients. Fails on an unreadable
    /// `config.json` or when the TLS setup cannot be built.
    pub fn new(opts: RegistryOptions) -> Result<Self, Error> {
        Ok(Registry {
            inner: Arc::new(remote::Remote::new(opts)?),
        })
    }

    /// Resolves to one platform manifest (an index is narrowed to `platform`), fetching the
    /// manifest and the config (verified by digest; the config blob is also stored in `store`).
    pub async fn resolve(
        &self,
        image: &ImageRef,
        platform: &Platform,
        store: &Store,
    ) -> Result<ResolvedImage, Error> {
        match image {
            ImageRef::Registry(r) => self.inner.resolve(r, platform, store).await,
            ImageRef::Layout(l) => layout::resolve(l, platform, store).await,
        }
    }

    /// Pushes an image (or a build cache) whose blobs are in `store` to registry reference
    /// `target`: the blobs the registry lacks first (streamed, several at once), then the
    /// manifest, under `target`'s digest when it has one (it must be the manifest's: the
    /// per-platform manifests of an index go up so, tagging nothing), else its tag (or
    /// `latest`). Returns the manifest digest.
    pub async fn push(
        &self,
        target: &Reference,
        blobs: &[(Digest, u64)],
        manifest: &[u8],
        media_type: &str,
        store: &Store,
    ) -> Result<Digest, Error> {
        self.inner
            .push(target, blobs, manifest, media_type, store)
            .await
    }

    /// The manifest or index `r` names, as it is (size-checked, verified when `r` has a
    /// digest), with its digest: for documents that are not images, such as build caches.
    pub async fn fetch_manifest(&self, r: &Reference) -> Result<(Digest, Vec<u8>), Error> {
        self.inner.fetch_manifest(r).await
    }

    /// Puts `blobs` of repository `r` into `store`: only missing ones, streamed, verified by
    /// digest, several in parallel. Unlike [`Registry::fetch_layers`], nothing is unpacked
    /// or checked against an image config.
    pub async fn fetch_blobs(
        &self,
        r: &Reference,
        blobs: &[Descriptor],
        store: &Store,
    ) -> Result<(), Error> {
        let refs: Vec<&Descriptor> = blobs.iter().collect();
        self.inner.fetch_blobs(r, &refs, store).await
    }

    /// Puts every layer blob of `image` into `store`: only missing ones, streamed to disk (never
    /// the whole layer in memory), verified by digest, several in parallel (up to 3). Then
    /// checks that every layer, fetched now or earlier, unpacks to the diff id the image
    /// config lists for it: only then may the layers be imported.
    ///
    /// A layer blob that was in the store before and fails that check is hashed: one that
    /// changed on disk is removed (with what the store derived from it) and fetched again.
    pub async fn fetch_layers(&self, image: &ResolvedImage, store: &Store) -> Result<(), Error> {
        let mut missing: Vec<&Descriptor> = Vec::new();
        for l in &image.layers {
            if !store.has_blob(&l.digest) && !missing.iter().any(|m| m.digest == l.digest) {
                missing.push(l);
            }
        }
        self.fetch_missing(image, &missing, store).await?;
        let checked = verify_diff_ids(image, store).await;
        if checked.is_ok() {
            return checked;
        }
        let had: Vec<Descriptor> = image
            .layers
            .iter()
            .filter(|l| !missing.iter().any(|m| m.digest == l.digest))
            .cloned()
            .collect();
        let changed = drop_changed_blobs(image, had, store).await?;
        if changed.is_empty() {
            return checked;
        }
        let changed: Vec<&Descriptor> = changed.iter().collect();
        self.fetch_missing(image, &changed, store).await?;
        verify_diff_ids(image, store).await
    }

    /// Puts `missing` blobs of `image` into `store`, from where the image comes from.
    async fn fetch_missing(
        &self,
        image: &ResolvedImage,
        missing: &[&Descriptor],
        store: &Store,
    ) -> Result<(), Error> {
        if missing.is_empty() {
            return Ok(());
        }
        match &image.reference {
            ImageRef::Registry(r) => self.inner.fetch_blobs(r, missing, store).await,
            ImageRef::Layout(l) => layout::copy_blobs(l, missing, store).await,
        }
    }
}

/// Checks every layer of `image` against the config's diff ids (blocking work: decompresses
/// every layer).
async fn verify_diff_ids(image: &ResolvedImage, store: &Store) -> Result<(), Error> {
    let (image, store) = (image.clone(), store.clone());
    let name = image.reference.to_string();
    tokio::task::spawn_blocking(move || diff_ids::verify(&image, &store))
        .await
        .map_err(|e| Error::Registry {
            op: Op::FetchLayers,
            image: name,
            why: format!("diff id check failed to run: {e}"),
        })?
}

/// Hashes the blobs `had` (in the store before this pull) and removes those whose bytes
/// changed on disk, with what the store derived from them; returns them, to be fetched again.
async fn drop_changed_blobs(
    image: &ResolvedImage,
    had: Vec<Descriptor>,
    store: &Store,
) -> Result<Vec<Descriptor>, Error> {
    let store = store.clone();
    let name = image.reference.to_string();
    let store_err = {
        let name = name.clone();
        move |source| Error::Store {
            op: Op::FetchLayers,
            image: name.clone(),
            source,
        }
    };
    tokio::task::spawn_blocking(move || {
        let mut changed = Vec::new();
        for l in had {
            if let kiln_snapshot::verify::BlobState::Changed(_) =
                store.check_blob(&l.digest).map_err(&store_err)?
            {
                store.drop_blob(&l.digest).map_err(&store_err)?;
                changed.push(l);
            }
        }
        Ok(changed)
    })
    .await
    .map_err(|e| Error::Registry {
        op: Op::FetchLayers,
        image: name,
        why: format!("blob check failed to run: {e}"),
    })?
}
