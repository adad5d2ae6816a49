//! Cache that travels: `--cache-to` writes the records of a build (cache key → the layer blobs
//! of its result) in BuildKit's cache manifest format; `--cache-from` reads them back, so that a
//! step missing from the local index may still be a hit.
//!
//! Imports are lazy: reading a cache reads its manifest and config only. A layer blob is copied
//! into the store (checked against its digest) only when a step the build needs is a hit on a
//! record that names it; steps below a hit are only asked whether they are cached, which the
//! records answer without any blob (`Executor::has_cached`). The layer is then taken as its
//! blob (kiln-snapshot's blob-only layers, with the cache's diff id): its files are written
//! only when a step runs on it or reads it, and an export streams the blob. An imported hit is
//! recorded in the local index, so that the next build finds it there.
//!
//! A cache that cannot be read is a warning and the build goes on, as in BuildKit; a layer that
//! cannot be imported is a miss, and the step runs.

mod format;
mod layout;
mod merge;
mod mounts;

pub(crate) use mounts::cache_mounts_for;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kiln_cache::{CacheIndex, CacheRecord};
use kiln_graph::{Definition, Op, SourceOp};
use kiln_plugin_sdk::proto::Diagnostic;
use kiln_snapshot::{Compression, LayerId, Snapshot, Store};
use kiln_solver::{Event, ProgressSink};
use kiln_types::image::{Descriptor, MEDIA_TYPE_DOCKER_LAYER_GZIP};
use kiln_types::reference::Reference;
use kiln_types::Digest;

use crate::Error;
use format::{LayerRef, ANNOTATION_UNCOMPRESSED};
pub use merge::merge_registry_caches;

/// Where a cache lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheLocation {
    /// `type=local`: an OCI image layout directory (`dest=` / `src=`), the cache under `tag`.
    Local {
        /// The layout directory.
        dir: PathBuf,
        /// The tag naming the cache in `index.json` (`latest` by default).
        tag: String,
    },
    /// `type=registry,ref=REF`: a cache manifest pushed to (or pulled from) a registry.
    Registry {
        /// Where (`latest` when no tag is given).
        reference: Reference,
    },
    /// `type=inline` (export only): the cache config inside the image's config, naming the
    /// image's own layers (the result's chain: `mode=min`). Read back with `type=registry`
    /// from the pushed image.
    Inline,
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLocation::Local { dir, .. } => write!(f, "{}", dir.display()),
            CacheLocation::Registry { reference } => write!(f, "{reference}"),
            CacheLocation::Inline => f.write_str("inline"),
        }
    }
}

/// Which records an export holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// The result's chain only: the steps whose results are a prefix of the result's layers.
    #[default]
    Min,
    /// Every step of the build, other stages included.
    Max,
}

/// How the layers of an exported cache are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheCompression {
    /// gzip (the default, as BuildKit's).
    #[default]
    Gzip,
    /// Plain tar.
    Uncompressed,
    /// zstd.
    Zstd,
}

impl std::str::FromStr for CacheCompression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gzip" => Ok(CacheCompression::Gzip),
            "uncompressed" => Ok(CacheCompression::Uncompressed),
            "zstd" => Ok(CacheCompression::Zstd),
            other => Err(format!(
                "unknown compression {other:?}: expected gzip, zstd or uncompressed"
            )),
        }
    }
}

/// One `--cache-to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheExport {
    /// Where.
    pub location: CacheLocation,
    /// `mode=min|max`.
    pub mode: CacheMode,
    /// `compression=`.
    pub compression: CacheCompression,
    /// `force-compression=true`: layers that came as blobs (base images) are compressed as
    /// asked too, instead of keeping their blob.
    pub force_compression: bool,
    /// `oci-mediatypes=` (default true): OCI media types, else docker's.
    pub oci_mediatypes: bool,
    /// `image-manifest=true`: an image manifest whose config is the cache config, instead of
    /// an index.
    pub image_manifest: bool,
    /// `ignore-error=true`: a failed export is a warning, not a failed build.
    pub ignore_error: bool,
    /// `cache-mounts=true`: the contents of the build's `RUN --mount=type=cache` directories
    /// go into the cache too (not for `type=inline`).
    pub cache_mounts: bool,
}

/// One `--cache-from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheImport {
    /// Where.
    pub location: CacheLocation,
}

/// Where the blobs of an imported cache are.
#[derive(Debug)]
enum Origin {
    Local(PathBuf),
    Registry(Reference),
}

/// A layer of an imported record: where its blob is and what the cache says of it.
#[derive(Clone, Debug)]
struct SourcedLayer {
    origin: Arc<Origin>,
    layer: LayerRef,
}

/// The registry client and the runtime its calls run on, from a blocking thread.
#[derive(Clone)]
pub(crate) struct Net {
    pub registry: kiln_registry::Registry,
    pub handle: tokio::runtime::Handle,
    /// Stops a call that waits on a registry: the build was cancelled, or it ended early
    /// while the caches were still being read.
    pub cancel: kiln_solver::CancellationToken,
}

impl Net {
    fn block<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, kiln_registry::Error>>,
    ) -> Result<T, String> {
        crate::block_unless_cancelled(&self.handle, &self.cancel, fut)
            .ok_or_else(|| "cancelled".to_owned())?
            .map_err(|e| e.to_string())
    }
}

/// The records of every `--cache-from`, the first source naming a key winning: by key, the
/// cache that has it.
pub(crate) struct Imported {
    records: HashMap<Digest, (Arc<Origin>, Arc<format::Parsed>)>,
    /// The cache mounts, by id, the first source naming an id winning.
    mounts: HashMap<String, (Arc<Origin>, mounts::MountBlob)>,
    net: Net,
    /// Cache mounts that could not be restored or exported again.
    warnings: Mutex<Vec<String>>,
}

impl Imported {
    /// No records.
    pub(crate) fn empty(net: Net) -> Self {
        Imported {
            records: HashMap::new(),
            mounts: HashMap::new(),
            net,
            warnings: Mutex::new(Vec::new()),
        }
    }

    fn warn(&self, message: String) {
        lock(&self.warnings).push(message);
    }

    /// Reads every source (from a blocking thread); a source that cannot be read is a
    /// warning (returned), as in BuildKit. Only manifests and configs are read.
    pub(crate) fn read(imports: &[CacheImport], net: Net, store: &Store) -> (Self, Vec<String>) {
        let mut imported = Imported::empty(net);
        let mut warnings = Vec::new();
        for import in imports {
            let (origin, found) = match &import.location {
                CacheLocation::Local { dir, tag } => (
                    Origin::Local(dir.clone()),
                    layout::read_cache(dir, tag).map_err(|why| {
                        format!(
                            "local cache import at {} not found due to err: {why}",
                            dir.display()
                        )
                    }),
                ),
                CacheLocation::Registry { reference } => (
                    Origin::Registry(reference.clone()),
                    read_registry(&imported.net, reference, store).map_err(|why| {
                        format!("failed to import cache from registry {reference}: {why}")
                    }),
                ),
                CacheLocation::Inline => {
                    warnings.push(
                        "--cache-from type=inline reads nothing: an inline cache is read from \
                         its image, with type=registry,ref=IMAGE"
                            .to_owned(),
                    );
                    continue;
                }
            };
            match found {
                Ok(parsed) => {
                    let (origin, parsed) = (Arc::new(origin), Arc::new(parsed));
                    let (found, bad) = mounts::from_descriptors(&parsed.mounts);
                    warnings.extend(bad);
                    for m in found {
                        imported
                            .mounts
                            .entry(m.id.clone())
                            .or_insert_with(|| (origin.clone(), m));
                    }
                    for key in parsed.keys() {
                        imported
                            .records
                            .entry(*key)
                            .or_insert_with(|| (origin.clone(), parsed.clone()));
                    }
                }
                Err(warning) => warnings.push(warning),
            }
        }
        (imported, warnings)
    }

    /// Whether a record names `key` (no blob is read).
    pub(crate) fn has(&self, key: &Digest) -> bool {
        self.records.contains_key(key)
    }

    /// The layers of `key`'s record, base first, with where their blobs are; `None` without a
    /// usable record.
    fn layers_of(&self, key: &Digest) -> Option<Vec<SourcedLayer>> {
        let (origin, parsed) = self.records.get(key)?;
        let chain = parsed.chain(key)?;
        Some(
            chain
                .into_iter()
                .map(|layer| SourcedLayer {
                    origin: origin.clone(),
                    layer,
                })
                .collect(),
        )
    }

    /// The result of `key` as a snapshot of this store: each layer found by its diff id, or
    /// its blob copied in (checked) and taken as a blob-only layer (unpacked at once when the
    /// cache gives no diff id). Recorded in `index` for the next builds.
    /// `Ok(None)`: no record.
    pub(crate) fn materialize(
        &self,
        store: &Store,
        index: &CacheIndex,
        key: &Digest,
        usage: &kiln_cache::RecordUse,
    ) -> Result<Option<Snapshot>, String> {
        let Some(layers) = self.layers_of(key) else {
            return if self.has(key) {
                Err("its chain of layers is broken in the cache".to_owned())
            } else {
                Ok(None)
            };
        };
        let layers = &layers;
        // The blobs a registry must send are asked for together, so that they come several
        // at once over one session (a chain of 30 RUN layers is 30 blobs).
        let mut wanted: Vec<(&Reference, Descriptor)> = Vec::new();
        for l in layers {
            if let Origin::Registry(r) = &*l.origin {
                if self.local_layer(store, l)?.is_none() && !store.has_blob(&l.layer.digest) {
                    let desc = Descriptor::new(&l.layer.media_type, l.layer.digest, l.layer.size);
                    wanted.push((r, desc));
                }
            }
        }
        let mut origins: Vec<&Reference> = wanted.iter().map(|(r, _)| *r).collect();
        origins.dedup();
        for r in origins {
            let descs: Vec<Descriptor> = wanted
                .iter()
                .filter(|(o, _)| *o == r)
                .map(|(_, d)| d.clone())
                .collect();
            self.net
                .block(self.net.registry.fetch_blobs(r, &descs, store))?;
        }
        // Layers are taken as a cache hit takes them: under the use lock, so that a collector
        // spares those already in the store (touched) and those made now until the record
        // names them (gc.rs).
        let _taking = store.use_lock().map_err(|e| e.to_string())?;
        let mut snapshot = Snapshot::default();
        for l in layers {
            snapshot.layers.push(self.import_layer(store, l)?);
        }
        index
            .put_used(
                key,
                &CacheRecord {
                    snapshot: snapshot.clone(),
                    created_unix: usage.last_used_ms / 1000,
                },
                usage,
            )
            .map_err(|e| e.to_string())?;
        Ok(Some(snapshot))
    }

    /// Puts the blob of `l` into the store (checked against its digest) unless it is there.
    fn fetch(&self, store: &Store, l: &SourcedLayer) -> Result<(), String> {
        let LayerRef {
            digest,
            media_type,
            size,
            ..
        } = &l.layer;
        if store.has_blob(digest) {
            return Ok(());
        }
        match &*l.origin {
            Origin::Local(dir) => {
                let path = layout::blob_path(dir, digest);
                let mut w = store.blob_writer().map_err(|e| e.to_string())?;
                layout::copy_verified(&path, digest, &mut w)?;
                w.commit(Some(digest)).map_err(|e| e.to_string())?;
            }
            Origin::Registry(r) => {
                let desc = Descriptor::new(media_type, *digest, *size);
                self.net
                    .block(self.net.registry.fetch_blobs(r, &[desc], store))?;
            }
        }
        Ok(())
    }

    /// The layer of the store with the diff id the cache gives `l`, if there is one.
    fn local_layer(&self, store: &Store, l: &SourcedLayer) -> Result<Option<LayerId>, String> {
        match &l.layer.diff_id {
            Some(d) => store.layer_by_diff_id(d).map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    fn import_layer(&self, store: &Store, l: &SourcedLayer) -> Result<LayerId, String> {
        let LayerRef {
            digest,
            media_type,
            diff_id,
            ..
        } = &l.layer;
        if let Some(id) = self.local_layer(store, l)? {
            let _ = store.touch_layer(&id);
            return Ok(id);
        }
        self.fetch(store, l)?;
        // With the cache's diff id the layer is taken as its blob, unpacked only when a step
        // must run on it or read it (and checked against that diff id then); an export needs
        // the blob alone. BuildKit's imported layers are as lazy.
        if let Some(d) = diff_id {
            return store
                .import_layer_lazy(digest, media_type, d)
                .map(|l| l.id)
                .map_err(|e| e.to_string());
        }
        let imported = store
            .import_layer(digest, media_type)
            .map_err(|e| e.to_string())?;
        if let Some(want) = diff_id {
            if *want != imported.diff_id {
                return Err(format!(
                    "layer {digest} unpacks to {}, but the cache says {want}",
                    imported.diff_id
                ));
            }
        }
        Ok(imported.id)
    }
}

/// The records of the cache inside the config of image `r` (`manifest`), naming its layers.
fn read_inline(
    net: &Net,
    r: &Reference,
    store: &Store,
    manifest: &[u8],
) -> Result<format::Parsed, String> {
    let m: kiln_types::image::Manifest = serde_json::from_slice(manifest)
        .map_err(|_| "not an image manifest either (an index is not read)".to_owned())?;
    if m.config.size > kiln_registry::MAX_CONFIG_SIZE {
        return Err(format!("image config {} is too large", m.config.digest));
    }
    net.block(
        net.registry
            .fetch_blobs(r, std::slice::from_ref(&m.config), store),
    )?;
    let bytes = store
        .read_blob(&m.config.digest)
        .map_err(|e| e.to_string())?;
    #[derive(serde::Deserialize)]
    struct WithCache {
        #[serde(rename = "moby.buildkit.cache.v0", default)]
        cache: Option<String>,
    }
    let inline = serde_json::from_slice::<WithCache>(&bytes)
        .ok()
        .and_then(|c| c.cache)
        .ok_or_else(|| format!("the image has no inline cache ({INLINE_KEY} in its config)"))?;
    use base64::Engine as _;
    let json = base64::engine::general_purpose::STANDARD
        .decode(inline.trim())
        .map_err(|e| format!("inline cache: {e}"))?;
    let config: format::CacheConfig =
        serde_json::from_slice(&json).map_err(|e| format!("inline cache: {e}"))?;
    let layers = m.layers.into_iter().map(|d| (d.digest, d)).collect();
    Ok(format::Parsed::new(config, layers))
}

/// The records of the cache manifest `r` names in its registry: the manifest and the config
/// blob are fetched (checked), no layer.
fn read_registry(net: &Net, r: &Reference, store: &Store) -> Result<format::Parsed, String> {
    let (_, manifest) = net.block(net.registry.fetch_manifest(r))?;
    let (config_desc, layers, mounts) = match format::parse_manifest(&manifest) {
        Ok(found) => found,
        // Not a cache manifest: an image may carry its cache inline.
        Err(not_cache) => {
            return read_inline(net, r, store, &manifest)
                .map_err(|why| format!("{not_cache}; {why}"))
        }
    };
    if config_desc.size > layout::MAX_CONFIG_BYTES {
        return Err(format!(
            "cache config {} is {} bytes, more than kiln reads ({})",
            config_desc.digest,
            config_desc.size,
            layout::MAX_CONFIG_BYTES
        ));
    }
    net.block(
        net.registry
            .fetch_blobs(r, std::slice::from_ref(&config_desc), store),
    )?;
    let bytes = store
        .read_blob(&config_desc.digest)
        .map_err(|e| e.to_string())?;
    let config: format::CacheConfig = serde_json::from_slice(&bytes)
        .map_err(|e| format!("cache config {}: {e}", config_desc.digest))?;
    Ok(format::Parsed::new(config, layers).with_mounts(mounts))
}

/// What a build's steps produced, for `--cache-to`: each vertex's key, and each key's result
/// when this build loaded or ran it.
#[derive(Default)]
pub(crate) struct Tracker {
    keys: Mutex<HashMap<Digest, Digest>>,
    results: Mutex<HashMap<Digest, Snapshot>>,
    warnings: Mutex<Vec<String>>,
}

impl Tracker {
    pub(crate) fn key(&self, vertex: Digest, key: Digest) {
        lock(&self.keys).insert(vertex, key);
    }

    pub(crate) fn result(&self, key: Digest, snapshot: &Snapshot) {
        lock(&self.results).insert(key, snapshot.clone());
    }

    pub(crate) fn warn(&self, message: String) {
        lock(&self.warnings).push(message);
    }

    /// The warnings gathered while solving (imported layers that could not be used).
    pub(crate) fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.warnings))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A layer of an exported record: in the store, or only in an imported cache.
#[derive(Clone, Debug)]
enum Source {
    Store(LayerId),
    Imported(SourcedLayer),
}

impl PartialEq for Source {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Source::Store(a), Source::Store(b)) => a == b,
            (Source::Imported(a), Source::Imported(b)) => a.layer.digest == b.layer.digest,
            _ => false,
        }
    }
}

impl Eq for Source {}

/// Reads every `--cache-from` (off the async threads); what cannot be read becomes a warning,
/// returned beside the records. Owns its arguments, so that it can run while the frontend
/// does.
pub(crate) async fn read_imports(
    imports: Vec<CacheImport>,
    net: Net,
    store: Store,
) -> Result<(Arc<Imported>, Vec<Diagnostic>), Error> {
    if imports.is_empty() {
        return Ok((Arc::new(Imported::empty(net)), Vec::new()));
    }
    let (imported, found) =
        tokio::task::spawn_blocking(move || Imported::read(&imports, net, &store))
            .await
            .map_err(|e| Error::Unsupported(format!("cache import task failed: {e}")))?;
    Ok((
        Arc::new(imported),
        found.into_iter().map(diagnostic).collect(),
    ))
}

fn diagnostic(message: String) -> Diagnostic {
    Diagnostic {
        message,
        location: None,
    }
}

/// What an export reads.
#[derive(Clone)]
pub(crate) struct ExportCx {
    pub store: Store,
    pub index: Arc<CacheIndex>,
    pub imported: Arc<Imported>,
    pub tracker: Arc<Tracker>,
    pub def: Arc<Definition>,
    /// The results exported: one per platform of the build (platforms with the same result
    /// name it once). Their chains go into one cache, as BuildKit exports every platform's
    /// result into one cache manifest.
    pub targets: Vec<Digest>,
}

/// Writes every `--cache-to`, each as a step of its own in the progress. A failed export fails
/// the build unless it says `ignore-error=true` (then it is a warning). Warnings gathered while
/// solving (imported layers that could not be used) are added to `warnings`.
pub(crate) async fn export_all(
    cx: ExportCx,
    specs: &[CacheExport],
    progress: &dyn ProgressSink<Digest>,
    warnings: &mut Vec<Diagnostic>,
) -> Result<(), Error> {
    warnings.extend(cx.tracker.take_warnings().into_iter().map(diagnostic));

    // Inline caches went into the image (`inline_config`).
    for spec in specs.iter().filter(|s| s.location != CacheLocation::Inline) {
        let id = Digest::of(format!("internal:cache-export:{}", spec.location).as_bytes());
        let name = match &spec.location {
            CacheLocation::Local { dir, .. } => {
                format!("exporting cache to client directory {}", dir.display())
            }
            CacheLocation::Registry { reference } => {
                format!("exporting cache to registry {reference}")
            }
            CacheLocation::Inline => continue,
        };
        progress.send(Event::Started {
            id,
            name: name.clone(),
        });
        let started = std::time::Instant::now();
        let (job_cx, job_spec) = (cx.clone(), spec.clone());
        let result = tokio::task::spawn_blocking(move || export(&job_cx, &job_spec))
            .await
            .map_err(|e| Error::Unsupported(format!("cache export task failed: {e}")))?
            .map_err(|e| match e {
                e @ Error::CacheExport { .. } => e,
                other => Error::CacheExport {
                    dest: spec.location.to_string(),
                    message: other.to_string(),
                },
            });
        match result {
            Ok(()) => progress.send(Event::Done {
                id,
                name,
                duration: started.elapsed(),
            }),
            Err(e) => {
                progress.send(Event::Error {
                    id,
                    name,
                    message: e.to_string(),
                });
                if !spec.ignore_error {
                    return Err(e);
                }
                warnings.push(diagnostic(format!("{e} (ignored: ignore-error=true)")));
            }
        }
    }
    // Cache mounts that could not be restored while solving, or exported again.
    let mounts = std::mem::take(&mut *lock(&cx.imported.warnings));
    warnings.extend(mounts.into_iter().map(diagnostic));
    Ok(())
}

/// The key under which BuildKit keeps an inline cache in an image config: the cache config's
/// JSON, base64-encoded (Go's encoding of a byte slice).
const INLINE_KEY: &str = "moby.buildkit.cache.v0";

/// With a `--cache-to type=inline`: the result chain's cache config, as it goes into the image
/// config (`embed_inline`). Its layers are the image's (gzip, as the image's by default).
pub(crate) async fn inline_config(
    cx: &ExportCx,
    specs: &[CacheExport],
) -> Result<Option<String>, Error> {
    let Some(spec) = specs.iter().find(|s| s.location == CacheLocation::Inline) else {
        return Ok(None);
    };
    let spec = CacheExport {
        mode: CacheMode::Min,
        compression: CacheCompression::Gzip,
        force_compression: false,
        ..spec.clone()
    };
    let cx = cx.clone();
    let config = tokio::task::spawn_blocking(move || collect(&cx, &spec).map(|(c, _)| c))
        .await
        .map_err(|e| Error::Unsupported(format!("cache export task failed: {e}")))??;
    use base64::Engine as _;
    let json = serde_json::to_vec(&config).expect("a cache config always serializes");
    Ok(Some(base64::engine::general_purpose::STANDARD.encode(json)))
}

/// `image` with `inline` (from `inline_config`) in its config: new config and manifest blobs.
pub(crate) fn embed_inline(
    store: &Store,
    mut image: kiln_export::Image,
    inline: &str,
) -> Result<kiln_export::Image, Error> {
    let fail = |message: String| Error::CacheExport {
        dest: "inline".to_owned(),
        message,
    };
    let bytes = store.read_blob(&image.manifest_doc.config.digest)?;
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("image config: {e}")))?;
    config.insert(
        INLINE_KEY.to_owned(),
        serde_json::Value::String(inline.to_owned()),
    );
    let bytes = serde_json::to_vec(&config).expect("a JSON object always serializes");
    image.manifest_doc.config.digest = store.write_blob(&bytes)?;
    image.manifest_doc.config.size = bytes.len() as u64;
    let manifest = serde_json::to_vec(&image.manifest_doc).expect("a manifest always serializes");
    image.manifest.digest = store.write_blob(&manifest)?;
    image.manifest.size = manifest.len() as u64;
    Ok(image)
}

/// Writes one `--cache-to`.
fn export(input: &ExportCx, spec: &CacheExport) -> Result<(), Error> {
    let (config, mut blobs) = collect(input, spec)?;
    if spec.cache_mounts {
        blobs.extend(mounts::export(input, &needed(input))?);
    }
    write(input, spec, &config, blobs)
}

/// The targets and every vertex they need.
fn needed(input: &ExportCx) -> HashSet<Digest> {
    let mut needed = HashSet::new();
    let mut stack = input.targets.clone();
    while let Some(v) = stack.pop() {
        if needed.insert(v) {
            if let Some(vx) = input.def.vertex(&v) {
                stack.extend(vx.inputs.iter().map(|e| e.vertex));
            }
        }
    }
    needed
}

/// The cache config of a `--cache-to` and its layer blobs (in the store, or to be checked when
/// copied).
#[allow(clippy::type_complexity)]
fn collect(
    input: &ExportCx,
    spec: &CacheExport,
) -> Result<(format::CacheConfig, Vec<(Descriptor, PathBuf, bool)>), Error> {
    let def = &input.def;
    let keys = lock(&input.tracker.keys).clone();
    let needed = needed(input);
    let mut chosen: Vec<(Digest, Vec<Source>, Vec<Digest>)> = Vec::new();
    let mut seen = HashSet::new();
    for v in def.vertices.iter().filter(|v| needed.contains(&v.digest)) {
        // A local context is hashed again by every build that uses it; its files are the
        // user's, and no step below it needs its layer once the steps above it are records.
        if matches!(v.op, Op::Source(SourceOp::Local(_))) {
            continue;
        }
        let Some(key) = keys.get(&v.digest).copied() else {
            continue;
        };
        if !seen.insert(key) {
            continue;
        }
        let Some(layers) = result_of(input, &key)? else {
            continue;
        };
        if layers.is_empty() {
            continue;
        }
        let inputs = v
            .inputs
            .iter()
            .filter_map(|e| keys.get(&e.vertex).copied())
            .collect();
        chosen.push((key, layers, inputs));
    }
    if spec.mode == CacheMode::Min {
        // Each result's chain: the records whose layers a result starts with.
        let target_layers: Vec<Vec<Source>> = input
            .targets
            .iter()
            .filter_map(|t| keys.get(t))
            .filter_map(|k| chosen.iter().find(|(key, _, _)| key == k))
            .map(|(_, l, _)| l.clone())
            .collect();
        chosen.retain(|(_, l, _)| target_layers.iter().any(|t| t.starts_with(l)));
    }
    // Blobs, once each.
    let mut blob_of: HashMap<Source, LayerRef> = HashMap::new();
    let mut blobs: Vec<(Descriptor, PathBuf, bool)> = Vec::new();
    let mut records = Vec::new();
    for (key, layers, inputs) in &chosen {
        let mut refs = Vec::new();
        for s in layers {
            let layer = match blob_of.get(s) {
                Some(l) => l.clone(),
                None => {
                    let (layer, path, verify) = blob(input, s, spec)?;
                    if !blobs.iter().any(|(d, _, _)| d.digest == layer.digest) {
                        let mut d = Descriptor::new(&layer.media_type, layer.digest, layer.size);
                        if let Some(id) = layer.diff_id {
                            d.annotations
                                .insert(ANNOTATION_UNCOMPRESSED.to_owned(), id.to_string());
                        }
                        blobs.push((d, path, verify));
                    }
                    blob_of.insert(s.clone(), layer.clone());
                    layer
                }
            };
            refs.push(layer);
        }
        records.push((*key, refs, inputs.clone()));
    }
    Ok((format::build_config(&records), blobs))
}

/// Writes a collected cache where `spec` says.
fn write(
    input: &ExportCx,
    spec: &CacheExport,
    config: &format::CacheConfig,
    blobs: Vec<(Descriptor, PathBuf, bool)>,
) -> Result<(), Error> {
    match &spec.location {
        CacheLocation::Local { dir, tag } => {
            if spec.image_manifest && !spec.oci_mediatypes {
                return Err(Error::CacheExport {
                    dest: dir.display().to_string(),
                    message: "image-manifest=true needs oci-mediatypes=true".to_owned(),
                });
            }
            layout::write_cache(
                dir,
                tag,
                &blobs,
                config,
                spec.image_manifest,
                spec.oci_mediatypes,
            )?;
        }
        CacheLocation::Registry { reference } => {
            let fail = |message: String| Error::CacheExport {
                dest: reference.to_string(),
                message,
            };
            if spec.image_manifest && !spec.oci_mediatypes {
                return Err(fail(
                    "image-manifest=true needs oci-mediatypes=true".to_owned(),
                ));
            }
            let bytes = serde_json::to_vec(config).expect("a cache config always serializes");
            let config_desc = Descriptor::new(
                format::MEDIA_TYPE_CACHE_CONFIG,
                input.store.write_blob(&bytes)?,
                bytes.len() as u64,
            );
            let layers: Vec<Descriptor> = blobs.into_iter().map(|(d, _, _)| d).collect();
            // Two cache mounts may hold the same bytes: each blob is sent once.
            let mut upload: Vec<(Digest, u64)> = Vec::new();
            for d in &layers {
                if !upload.iter().any(|(u, _)| *u == d.digest) {
                    upload.push((d.digest, d.size));
                }
            }
            upload.push((config_desc.digest, config_desc.size));
            let (media_type, manifest) = format::manifest(
                config_desc,
                layers,
                spec.image_manifest,
                spec.oci_mediatypes,
            );
            let net = &input.imported.net;
            net.block(
                net.registry
                    .push(reference, &upload, &manifest, &media_type, &input.store),
            )
            .map_err(fail)?;
        }
        // Written into the image by the image export (`embed_inline`).
        CacheLocation::Inline => {}
    }
    Ok(())
}

impl std::hash::Hash for Source {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        match self {
            Source::Store(id) => id.hash(h),
            Source::Imported(l) => l.layer.digest.hash(h),
        }
    }
}

/// The layers of `key`'s result: this build's, the local index's, or an imported record's
/// (as store layers where they were imported already).
fn result_of(input: &ExportCx, key: &Digest) -> Result<Option<Vec<Source>>, Error> {
    if let Some(s) = lock(&input.tracker.results).get(key) {
        return Ok(Some(s.layers.iter().cloned().map(Source::Store).collect()));
    }
    if let Some(rec) = input.index.get(&input.store, key)? {
        return Ok(Some(
            rec.snapshot.layers.into_iter().map(Source::Store).collect(),
        ));
    }
    let Some(layers) = input.imported.layers_of(key) else {
        return Ok(None);
    };
    layers
        .iter()
        .map(|l| {
            let local = match &l.layer.diff_id {
                Some(d) => input.store.layer_by_diff_id(d)?,
                None => None,
            };
            Ok(match local {
                Some(id) => Source::Store(id),
                None => Source::Imported(l.clone()),
            })
        })
        .collect::<Result<Vec<_>, Error>>()
        .map(Some)
}

/// Layer `id`'s blob in `compression`, checked against its digest: as for image exports, a
/// blob whose bytes changed on disk is never exported; it is dropped from the store and made
/// again from the layer's directory (see `export::run`). Changed again at once: an error.
fn checked_layer_blob(
    store: &Store,
    id: &kiln_snapshot::LayerId,
    compression: Compression,
) -> Result<kiln_snapshot::LayerBlob, Error> {
    use kiln_snapshot::verify::BlobState;
    let b = store.layer_blob(id, compression)?;
    let BlobState::Changed(_) = store.check_blob(&b.digest)? else {
        return Ok(b);
    };
    store.drop_blob(&b.digest)?;
    let b = store.layer_blob(id, compression)?;
    match store.check_blob(&b.digest)? {
        BlobState::Changed(m) => Err(kiln_snapshot::Error::BlobChanged(m).into()),
        _ => Ok(b),
    }
}

/// The zstd blob of a layer, made from its plain tar blob `tar`. The store keeps a layer's gzip and
/// plain forms only, so it is made again by each export (the same bytes: one thread, the
/// default level).
fn zstd_blob(
    store: &Store,
    tar: &kiln_snapshot::LayerBlob,
) -> Result<kiln_snapshot::LayerBlob, Error> {
    let path = store.blob_path(&tar.digest);
    let io = |e: std::io::Error| Error::io("compress", &path, e);
    // Read checked: a changed tar must not become a new blob under a valid digest.
    let mut input = std::io::BufReader::new(store.open_blob_verified(&tar.digest)?);
    let mut out = store.blob_writer()?;
    let mut enc = zstd::stream::write::Encoder::new(&mut out, 0).map_err(io)?;
    std::io::copy(&mut input, &mut enc).map_err(io)?;
    enc.finish().map_err(io)?;
    let size = out.len();
    Ok(kiln_snapshot::LayerBlob {
        diff_id: tar.diff_id,
        digest: out.commit(None)?,
        size,
        media_type: kiln_types::image::MEDIA_TYPE_LAYER_ZSTD.to_owned(),
    })
}

/// The blob of one layer in the export's compression and media types, and its file in the
/// store (a layer only in an imported cache is fetched into the store first, and checked).
fn blob(
    input: &ExportCx,
    s: &Source,
    spec: &CacheExport,
) -> Result<(LayerRef, PathBuf, bool), Error> {
    let store = &input.store;
    let (mut layer, path, verify) = match s {
        Source::Store(id) => {
            let b = match spec.compression {
                CacheCompression::Gzip => checked_layer_blob(store, id, Compression::Gzip)?,
                other => {
                    // As BuildKit without force-compression: a layer that came as a blob (a
                    // base image's, indexed by the diff id of its gzip form, the pulled blob)
                    // keeps that blob, so that an image built from the cache names the same
                    // layers. An image export has usually made the gzip form already.
                    let gzip = checked_layer_blob(store, id, Compression::Gzip)?;
                    let pulled = store.layer_by_diff_id(&gzip.diff_id)?.as_ref() == Some(id);
                    if pulled && !spec.force_compression {
                        gzip
                    } else {
                        let tar = checked_layer_blob(store, id, Compression::Uncompressed)?;
                        if other == CacheCompression::Zstd {
                            zstd_blob(store, &tar)?
                        } else {
                            tar
                        }
                    }
                }
            };
            let path = store.blob_path(&b.digest);
            (
                LayerRef {
                    digest: b.digest,
                    media_type: b.media_type,
                    size: b.size,
                    diff_id: Some(b.diff_id),
                },
                path,
                false,
            )
        }
        Source::Imported(l) => {
            input
                .imported
                .fetch(store, l)
                .map_err(|message| Error::CacheExport {
                    dest: spec.location.to_string(),
                    message,
                })?;
            (l.layer.clone(), store.blob_path(&l.layer.digest), false)
        }
    };
    if !spec.oci_mediatypes {
        layer.media_type = match layer.media_type.as_str() {
            kiln_types::image::MEDIA_TYPE_LAYER_GZIP => MEDIA_TYPE_DOCKER_LAYER_GZIP.to_owned(),
            kiln_types::image::MEDIA_TYPE_LAYER_TAR => {
                "application/vnd.docker.image.rootfs.diff.tar".to_owned()
            }
            other => other.to_owned(),
        };
    }
    Ok((layer, path, verify))
}
