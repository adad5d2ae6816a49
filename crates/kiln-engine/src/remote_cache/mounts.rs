//! Cache mounts that travel: with `--cache-to ...,cache-mounts=true`, the contents of every
//! `RUN --mount=type=cache` directory the build's steps use go into the cache as one gzip tar
//! blob per mount id; a `--cache-from` of that cache restores them into a store whose
//! directory for the id is missing or empty.
//!
//! BuildKit has no format for this (buildkit#1474), so the blobs are listed in the cache
//! manifest beside the layers, under kiln's own media type and annotations. BuildKit (and
//! kiln) readers take only the config's layers from a cache manifest and ignore every other
//! descriptor, so a BuildKit reader skips them.
//!
//! A mount blob is someone else's file: it is checked against its digest when it is copied
//! into the store, and unpacked with every check of a pulled layer (`Store::import_layer`:
//! no path escapes, bounded headers) before it is copied into the cache directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_graph::{CacheSharing, Definition, MountKind, Op};
use kiln_snapshot::{Compression, ReadView, Snapshot, Store};
use kiln_types::image::{Descriptor, MEDIA_TYPE_LAYER_GZIP};
use kiln_types::Digest;

use super::format::{LayerRef, ANNOTATION_UNCOMPRESSED};
use super::{lock, ExportCx, Imported, Origin, SourcedLayer};
use crate::run::{CacheMounts, MountImports, NewCacheDir, Restorable};
use crate::Error;

/// Media type of a cache mount blob: a gzip tar of the directory's contents (not a layer).
pub(crate) const MEDIA_TYPE_CACHE_MOUNT: &str = "application/vnd.kiln.cache-mount.v0.tar+gzip";
/// The mount id (`--mount=type=cache,id=`), as the Dockerfile gives it.
const ANNOTATION_ID: &str = "dev.kiln.cache-mount.id";
/// `shared`, `private` or `locked`, as the exporting step mounted it.
const ANNOTATION_SHARING: &str = "dev.kiln.cache-mount.sharing";
/// The directory's own mode (octal), uid and gid: how it is made again.
const ANNOTATION_MODE: &str = "dev.kiln.cache-mount.mode";
const ANNOTATION_UID: &str = "dev.kiln.cache-mount.uid";
const ANNOTATION_GID: &str = "dev.kiln.cache-mount.gid";

/// One cache mount's blob, as a cache names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountBlob {
    pub id: String,
    pub sharing: CacheSharing,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The blob (kiln's media type); `diff_id` is the digest of its tar.
    pub layer: LayerRef,
}

fn sharing_name(s: CacheSharing) -> &'static str {
    match s {
        CacheSharing::Shared => "shared",
        CacheSharing::Private => "private",
        CacheSharing::Locked => "locked",
    }
}

impl MountBlob {
    /// The descriptor that lists it in a cache manifest.
    pub(crate) fn descriptor(&self) -> Descriptor {
        let mut d = Descriptor::new(MEDIA_TYPE_CACHE_MOUNT, self.layer.digest, self.layer.size);
        let a = &mut d.annotations;
        a.insert(ANNOTATION_ID.to_owned(), self.id.clone());
        a.insert(
            ANNOTATION_SHARING.to_owned(),
            sharing_name(self.sharing).to_owned(),
        );
        a.insert(ANNOTATION_MODE.to_owned(), format!("{:04o}", self.mode));
        a.insert(ANNOTATION_UID.to_owned(), self.uid.to_string());
        a.insert(ANNOTATION_GID.to_owned(), self.gid.to_string());
        if let Some(id) = self.layer.diff_id {
            a.insert(ANNOTATION_UNCOMPRESSED.to_owned(), id.to_string());
        }
        d
    }

    /// Reads a descriptor of a cache manifest; what it cannot use is an error naming why.
    pub(crate) fn parse(d: &Descriptor) -> Result<Self, String> {
        let get = |key: &str| {
            d.annotations
                .get(key)
                .ok_or_else(|| format!("cache mount blob {} has no {key}", d.digest))
        };
        let number = |key: &str, radix: u32| -> Result<u32, String> {
            let v = get(key)?;
            u32::from_str_radix(v, radix)
                .map_err(|_| format!("cache mount blob {}: {key}={v:?} is not a number", d.digest))
        };
        let id = get(ANNOTATION_ID)?.clone();
        if id.is_empty() {
            return Err(format!("cache mount blob {} has an empty id", d.digest));
        }
        let sharing = match d.annotations.get(ANNOTATION_SHARING).map(String::as_str) {
            Some("private") => CacheSharing::Private,
            Some("locked") => CacheSharing::Locked,
            _ => CacheSharing::Shared,
        };
        let mode = number(ANNOTATION_MODE, 8)?;
        if mode > 0o7777 {
            return Err(format!(
                "cache mount blob {}: mode {mode:o} is not a permission mode",
                d.digest
            ));
        }
        Ok(MountBlob {
            id,
            sharing,
            mode,
            uid: number(ANNOTATION_UID, 10)?,
            gid: number(ANNOTATION_GID, 10)?,
            layer: LayerRef {
                digest: d.digest,
                media_type: d.media_type.clone(),
                size: d.size,
                diff_id: d
                    .annotations
                    .get(ANNOTATION_UNCOMPRESSED)
                    .and_then(|v| v.parse().ok()),
            },
        })
    }
}

/// The cache mounts of a cache manifest's descriptors: those of kiln's media type, usable or
/// not (a warning each).
pub(crate) fn from_descriptors(descriptors: &[Descriptor]) -> (Vec<MountBlob>, Vec<String>) {
    let mut mounts = Vec::new();
    let mut warnings = Vec::new();
    for d in descriptors
        .iter()
        .filter(|d| d.media_type == MEDIA_TYPE_CACHE_MOUNT)
    {
        match MountBlob::parse(d) {
            Ok(m) => mounts.push(m),
            Err(why) => warnings.push(format!("{why}: the cache mount is not restored")),
        }
    }
    (mounts, warnings)
}

/// The cache mounts the steps of `needed` use, by id (the first step's sharing), in the
/// order of the definition.
fn used(def: &Definition, needed: &HashSet<Digest>) -> Vec<(String, CacheSharing)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for v in def.vertices.iter().filter(|v| needed.contains(&v.digest)) {
        let Op::Exec(e) = &v.op else { continue };
        for m in &e.mounts {
            if let MountKind::Cache { id, sharing, .. } = &m.kind {
                if seen.insert(id.clone()) {
                    out.push((id.clone(), *sharing));
                }
            }
        }
    }
    out
}

/// The blobs of the cache mounts the build used, for a `--cache-to` with `cache-mounts=true`:
/// each directory of this store that is not empty, read under its lock (shared); else the
/// blob of an imported cache that had it, so that a cache passed from job to job keeps its
/// mounts when no step of a job needed them. A mount without either is left out.
pub(crate) fn export(
    input: &ExportCx,
    needed: &HashSet<Digest>,
) -> Result<Vec<(Descriptor, PathBuf, bool)>, Error> {
    let store = &input.store;
    let dirs = CacheMounts::of_store(store.root());
    let mut out: Vec<(Descriptor, PathBuf, bool)> = Vec::new();
    for (id, sharing) in used(&input.def, needed) {
        let here = match dirs.read(&id)? {
            Some(lease) if !is_empty(lease.dir()) => Some(pack(store, &id, sharing, lease.dir())?),
            _ => None,
        };
        let blob = match here {
            Some(b) => b,
            None => match input.imported.mounts.get(&id) {
                Some((origin, b)) => {
                    let source = SourcedLayer {
                        origin: origin.clone(),
                        layer: b.layer.clone(),
                    };
                    if let Err(why) = input.imported.fetch(store, &source) {
                        input.imported.warn(format!(
                            "cache mount {id:?} of the imported cache is not exported again: {why}"
                        ));
                        continue;
                    }
                    b.clone()
                }
                None => continue,
            },
        };
        out.push((
            blob.descriptor(),
            store.blob_path(&blob.layer.digest),
            false,
        ));
    }
    Ok(out)
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// The gzip tar of directory `dir` (the contents, not the directory itself) as a store blob.
fn pack(store: &Store, id: &str, sharing: CacheSharing, dir: &Path) -> Result<MountBlob, Error> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(dir).map_err(|e| Error::io("stat cache mount", dir, e))?;
    let mut w = store.blob_writer()?;
    let diff_id = kiln_snapshot::write_layer_tar(dir, Compression::Gzip, &mut w)?;
    let size = w.len();
    let digest = w.commit(None)?;
    Ok(MountBlob {
        id: id.to_owned(),
        sharing,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        layer: LayerRef {
            digest,
            media_type: MEDIA_TYPE_CACHE_MOUNT.to_owned(),
            size,
            diff_id: Some(diff_id),
        },
    })
}

/// The imported cache mounts of one build, as the RUN steps' cache directories see them.
struct BuildMounts {
    imported: Arc<Imported>,
    store: Store,
    /// Ids taken already: restored (or tried) once per build.
    taken: Mutex<HashSet<String>>,
}

impl MountImports for BuildMounts {
    fn pending(&self, id: &str) -> bool {
        self.imported.mounts.contains_key(id) && !lock(&self.taken).contains(id)
    }

    fn take(&self, id: &str) -> Option<Restorable> {
        let (origin, blob) = self.imported.mounts.get(id)?.clone();
        if !lock(&self.taken).insert(id.to_owned()) {
            return None;
        }
        let shown = match &*origin {
            Origin::Local(dir) => format!("cache {}", dir.display()),
            Origin::Registry(r) => format!("cache {r}"),
        };
        let (imported, store) = (self.imported.clone(), self.store.clone());
        let new_dir = NewCacheDir {
            mode: blob.mode,
            uid: blob.uid,
            gid: blob.gid,
        };
        Some(Restorable {
            new_dir,
            origin: shown,
            fill: Box::new(move |dir: &Path| restore(&imported, &store, &origin, &blob, dir)),
        })
    }

    fn warn(&self, message: String) {
        self.imported.warn(message);
    }
}

/// The cache mount directories of one build: `base`'s, restored from `imported` where it
/// has cache mounts.
pub(crate) fn cache_mounts_for(
    base: &Arc<CacheMounts>,
    imported: &Arc<Imported>,
    store: &Store,
) -> Arc<CacheMounts> {
    if imported.mounts.is_empty() {
        return base.clone();
    }
    Arc::new(base.with_imports(Arc::new(BuildMounts {
        imported: imported.clone(),
        store: store.clone(),
        taken: Mutex::new(HashSet::new()),
    })))
}

/// Fills the new directory `dir` with the contents of `blob`: copied into the store (checked
/// against its digest), unpacked as a layer is (every check of a pulled layer), then copied
/// with owners and modes; the directory gets the mode and owner it was exported with. The
/// blob and the unpacked layer served only this copy: those this restore brought into the
/// store are removed again, so that a package cache is not kept three times.
fn restore(
    imported: &Imported,
    store: &Store,
    origin: &Arc<Origin>,
    blob: &MountBlob,
    dir: &Path,
) -> Result<(), String> {
    let digest = blob.layer.digest;
    let new_blob = !store.has_blob(&digest);
    // Without a diff id in the cache, which layer is new cannot be told: the collector's.
    let new_layer = blob
        .layer
        .diff_id
        .filter(|d| matches!(store.layer_by_diff_id(d), Ok(None)));
    let filled = fill(imported, store, origin, blob, dir);
    let layer = new_layer.and_then(|d| store.layer_by_diff_id(&d).ok().flatten());
    if layer.is_some() || (new_blob && store.has_blob(&digest)) {
        // Deleted as the collector deletes: under gc.lock, through a trash.
        let removed = (|| -> Result<(), kiln_snapshot::Error> {
            let mut trash = store.trash()?;
            {
                let _collecting = store.gc_lock()?;
                if let Some(id) = &layer {
                    store.remove_layer(id, &mut trash)?;
                }
                if new_blob {
                    store.remove_blob(&digest, &mut trash)?;
                }
            }
            trash.empty()
        })();
        // What stays is unused, and the next collection takes it.
        let _ = removed;
    }
    filled
}

fn fill(
    imported: &Imported,
    store: &Store,
    origin: &Arc<Origin>,
    blob: &MountBlob,
    dir: &Path,
) -> Result<(), String> {
    let source = SourcedLayer {
        origin: origin.clone(),
        layer: blob.layer.clone(),
    };
    imported.fetch(store, &source)?;
    // As a cache hit takes a layer: a collector spares it while it is copied (gc.rs).
    let _taking = store.use_lock().map_err(|e| e.to_string())?;
    let layer = store
        .import_layer(&blob.layer.digest, MEDIA_TYPE_LAYER_GZIP)
        .map_err(|e| e.to_string())?;
    if let Some(want) = blob.layer.diff_id {
        if want != layer.diff_id {
            return Err(format!(
                "blob {} unpacks to {}, but the cache says {want}",
                blob.layer.digest, layer.diff_id
            ));
        }
    }
    let _ = store.touch_layer(&layer.id);
    let view = ReadView::new(
        store,
        &Snapshot {
            layers: vec![layer.id],
        },
    )
    .map_err(|e| e.to_string())?;
    let mut copy = kiln_graph::CopyAction::new(Some(0), "/", "/");
    copy.allow_wildcard = false;
    crate::fileop::apply(
        dir,
        &[kiln_graph::FileAction::Copy(copy)],
        &[view.path().to_owned()],
    )
    .map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(blob.mode))
        .and_then(|()| std::os::unix::fs::chown(dir, Some(blob.uid), Some(blob.gid)))
        .map_err(|e| format!("{}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(id: &str) -> MountBlob {
        MountBlob {
            id: id.to_owned(),
            sharing: CacheSharing::Locked,
            mode: 0o1777,
            uid: 1000,
            gid: 100,
            layer: LayerRef {
                digest: Digest::of(id.as_bytes()),
                media_type: MEDIA_TYPE_CACHE_MOUNT.to_owned(),
                size: 42,
                diff_id: Some(Digest::of(b"tar")),
            },
        }
    }

    #[test]
    fn a_mount_descriptor_reads_back_and_bad_ones_are_named() {
        let m = blob("/root/.cache/pip");
        let d = m.descriptor();
        assert_eq!(d.annotations[ANNOTATION_MODE], "1777");
        assert_eq!(MountBlob::parse(&d), Ok(m.clone()));
        // Through JSON, as a manifest carries it.
        let json = serde_json::to_string(&d).unwrap();
        let back: Descriptor = serde_json::from_str(&json).unwrap();
        assert_eq!(MountBlob::parse(&back), Ok(m));

        let mut layer = Descriptor::new(MEDIA_TYPE_LAYER_GZIP, Digest::of(b"l"), 1);
        layer
            .annotations
            .insert(ANNOTATION_ID.to_owned(), "x".into());
        let mut bad_mode = blob("a").descriptor();
        bad_mode
            .annotations
            .insert(ANNOTATION_MODE.to_owned(), "77777".into());
        let mut no_uid = blob("b").descriptor();
        no_uid.annotations.remove(ANNOTATION_UID);
        let mut empty_id = blob("c").descriptor();
        empty_id
            .annotations
            .insert(ANNOTATION_ID.to_owned(), "".into());
        let (mounts, warnings) =
            from_descriptors(&[layer, bad_mode, no_uid, empty_id, blob("good").descriptor()]);
        assert_eq!(mounts, vec![blob("good")], "layers are not mounts");
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].contains("not a permission mode"),
            "{warnings:?}"
        );
        assert!(warnings[1].contains(ANNOTATION_UID), "{warnings:?}");
        assert!(warnings[2].contains("empty id"), "{warnings:?}");
    }
}
