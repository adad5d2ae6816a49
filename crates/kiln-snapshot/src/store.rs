use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kiln_types::{Digest, Sha256Writer};
use serde::{Deserialize, Serialize};

use crate::layer_tar::{newest_mtime, write_layer_blob, BlobDigests, Compression};
use crate::session::{self, Session};
use crate::{io_err, Error, Result};

/// The store root: `blobs/sha256/<hex>` (the OCI layout's blob dir, so exports can hard-link),
/// `layers/<id>/{fs,layer.json,blob-<compression>.json}`, the import indexes
/// `layers/by-diff-id/<hex>` (→ layer id) and `layers/by-blob/<hex>` (→ diff id hex), `tmp/`.
///
/// Every temporary under `tmp/` belongs to the session of the process that opened the store
/// (see `session`): opening a store removes what dead processes left there.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    kind: SnapshotterKind,
    /// Overlay views are mounted by fuse-overlayfs, not the kernel (rootless kiln where the
    /// kernel refuses overlayfs in a user namespace: `fuse`).
    pub(crate) fuse: bool,
    session: Arc<Session>,
}

/// How views stack layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotterKind {
    /// Overlay mounts: instant, needs overlayfs and the right to mount.
    Overlay,
    /// Copies: views are materialized by applying the layers in order, and a write view's
    /// changes are found by comparing it with its lower layers. Works anywhere, costs a copy.
    Copy,
}

/// Identifies a committed layer directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LayerId(pub String);

/// An immutable filesystem: layers, base first. Empty = scratch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The layers, base first.
    pub layers: Vec<LayerId>,
}

/// A layer's exported form, recorded once computed so re-exports are free and identical.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBlob {
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Digest of the blob as stored.
    pub digest: Digest,
    /// Size of the blob.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
}

/// The name under which a layer's blob of this form is recorded: `gzip`, or `gzip-mtime<N>`
/// for one clamped to N (the plain name stays what earlier kilns wrote).
fn blob_key(compression: Compression, clamp_mtime: Option<u64>) -> String {
    match clamp_mtime {
        None => compression.name().to_owned(),
        Some(n) => format!("{}-mtime{n}", compression.name()),
    }
}

/// A layer being written; dropped without `commit`, it is removed.
pub struct LayerBuilder {
    dir: PathBuf,
    store: Store,
    committed: bool,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn unique_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!("{}-{}-{}", std::process::id(), t, n);
    Digest::of(seed.as_bytes()).short()
}

/// The store's record of the xattr its layers mark opaque directories with (rootless kiln's
/// `user.overlay.opaque`, root's `trusted.overlay.opaque`: `format.rs`).
const OPAQUE_RECORD: &str = "opaque-xattr";

/// Records `ours` in a new store, or refuses a store recorded with the other one: its opaque
/// directories would not hide what they hide, and views, layers and images would be wrong. A
/// store without the record predates rootless kiln, which is the only writer of `user.*`.
fn check_opaque_xattr(root: &Path, session: &str, ours: &'static str) -> Result<()> {
    let record = root.join(OPAQUE_RECORD);
    let theirs = match fs::read_to_string(&record) {
        Ok(t) => t.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = root
                .join("tmp")
                .join(format!("{session}-{OPAQUE_RECORD}-{}", unique_name()));
            fs::write(&tmp, ours)
                .and_then(|()| fs::rename(&tmp, &record))
                .map_err(io_err("record the opaque xattr of", &record))?;
            return Ok(());
        }
        Err(e) => return Err(io_err("read", &record)(e)),
    };
    if theirs == ours {
        return Ok(());
    }
    Err(Error::StoreOfOtherMode {
        root: root.to_owned(),
        made_with: theirs,
        reads: ours,
    })
}

/// The text of [`Error::StoreOfOtherMode`]: who made the store, how this kiln runs, and where
/// its own default store is.
pub(crate) fn other_mode_message(root: &Path, made_with: &str, reads: &str) -> String {
    let rootless = |x: &str| x.starts_with("user.");
    let (made_by, now, hint) = if rootless(reads) {
        (
            "kiln as root",
            "rootless",
            "rootless kiln's default is ~/.local/share/kiln",
        )
    } else {
        (
            "rootless kiln",
            "as root",
            "as root the default is /var/lib/kiln",
        )
    };
    format!(
        "the store at {} was made by {made_by}, whose layers mark opaque directories with \
         {made_with}; this kiln runs {now} and reads {reads}, so it would build from wrong \
         layers. Use another store (--root or KILN_ROOT; {hint})",
        root.display()
    )
}

impl Store {
    /// Opens (creating) a store at `root`. Views use overlayfs, unless `KILN_SNAPSHOTTER=copy`
    /// says otherwise or an overlay mount does not work here (then, in a user namespace,
    /// fuse-overlayfs when it is installed and works; else copies, with a one-time note on
    /// stderr). `KILN_SNAPSHOTTER=overlay` skips the probe; `fuse-overlayfs` forces that.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let forced = match std::env::var("KILN_SNAPSHOTTER") {
            Ok(v) if v == "copy" => Some(SnapshotterKind::Copy),
            Ok(v) if v == "overlay" || v == "fuse-overlayfs" => Some(SnapshotterKind::Overlay),
            Ok(v) if !v.is_empty() => return Err(Error::BadSnapshotter(v)),
            _ => None,
        };
        let mut store = Self::open_with(root, forced.unwrap_or(SnapshotterKind::Overlay))?;
        store.fuse = std::env::var("KILN_SNAPSHOTTER").is_ok_and(|v| v == "fuse-overlayfs");
        if forced.is_none() {
            let kernel = crate::view::probe_overlay_once(&store);
            // Rootless on a kernel without overlayfs in user namespaces (before 5.11): as
            // rootless BuildKit and Podman, fuse-overlayfs where it is installed.
            let fuse = || {
                if !(crate::format::user_namespace().is_some() && crate::fuse::installed()) {
                    return false;
                }
                let mut probe = store.clone();
                probe.fuse = true;
                crate::view::probe_overlay(&probe).is_ok()
            };
            if kernel.is_err() && fuse() {
                store.fuse = true;
            } else if let Err(why) = kernel {
                static NOTE: std::sync::Once = std::sync::Once::new();
                NOTE.call_once(|| {
                    eprintln!(
                        "kiln: overlay mounts do not work here ({why}); \
                         using the slower copy snapshotter"
                    );
                });
                store.kind = SnapshotterKind::Copy;
            }
        }
        Ok(store)
    }

    /// Opens (creating) a store at `root` whose views use `kind`, without probing. Starts this
    /// process's session and removes the temporaries of processes that died.
    pub fn open_with(root: impl Into<PathBuf>, kind: SnapshotterKind) -> Result<Self> {
        let root = root.into();
        for sub in [
            "blobs/sha256",
            "layers/by-diff-id",
            "layers/by-blob",
            "tmp",
            session::SESSIONS,
        ] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        let session = Session::start(&root, unique_name)?;
        // After the session exists: its temporary is named for it, so that a concurrent
        // kiln's sweep of ended sessions' temporaries leaves it alone.
        check_opaque_xattr(&root, session.id(), crate::format::opaque_xattr())?;
        session::sweep(&root, session.id());
        Ok(Store {
            root,
            kind,
            fuse: false,
            session: Arc::new(session),
        })
    }

    /// A fresh name under `tmp/` for a temporary of this session.
    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}-{what}-{}", self.session.id(), unique_name()))
    }

    /// How this store's views stack layers.
    pub fn snapshotter(&self) -> SnapshotterKind {
        self.kind
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh private directory under `tmp/`, removed by the caller.
    pub fn temp_dir(&self, what: &str) -> Result<PathBuf> {
        let p = self.tmp_path(what);
        fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        Ok(p)
    }

    /// Where a blob is (or would be).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Stores `bytes`, returning their digest.
    /// A blob already there is kept only if it holds these very bytes: one changed on disk is
    /// replaced, never trusted by its name.
    ///
    /// Not flushed to disk (no fsync): these are the small blobs a build makes (image configs,
    /// manifests, indexes, cache configs), and a power cut that loses one cannot make a later
    /// build trust it. The build that needs such a blob writes it again (and the comparison
    /// above replaces a damaged copy), every other read of one checks its digest (exports,
    /// pushes: `verify`), and no cache record names one. Blobs that records depend on (layer
    /// blobs) go through [`BlobWriter`], which flushes them.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        let same_len = fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64);
        if same_len && fs::read(&path).is_ok_and(|have| have == bytes) {
            return Ok(digest);
        }
        let tmp = self.tmp_path("blob");
        fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        Ok(digest)
    }

    /// Starts writing a blob of unknown content; [`BlobWriter::commit`] verifies and publishes
    /// it. Dropped without commit, nothing is left behind.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let tmp = self.tmp_path("blob");
        let file = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        Ok(BlobWriter {
            out: HashingFile {
                file,
                hash: Sha256Writer::default(),
            },
            tmp,
            store: self.clone(),
            done: false,
        })
    }

    /// Reads a whole blob.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(digest);
        fs::read(&p).map_err(io_err("read", &p))
    }

    /// Starts a new layer directory.
    pub fn new_layer(&self) -> Result<LayerBuilder> {
        let dir = self.tmp_path("layer");
        fs::create_dir_all(dir.join("fs")).map_err(io_err("create", &dir))?;
        Ok(LayerBuilder {
            dir,
            store: self.clone(),
            committed: false,
        })
    }

    /// The files of a committed layer, in overlayfs upper-dir format.
    pub fn layer_dir(&self, id: &LayerId) -> PathBuf {
        self.root.join("layers").join(&id.0).join("fs")
    }

    /// Whether a layer exists (cache entries are checked against this): its files, or its
    /// blob when it exists as a blob only (`lazy`).
    pub fn has_layer(&self, id: &LayerId) -> bool {
        self.layer_dir(id).is_dir() || self.lazy_blob(id).is_some_and(|b| self.has_blob(&b.digest))
    }

    /// The exported blob of a layer, computing and storing it on first use.
    pub fn layer_blob(&self, id: &LayerId, compression: Compression) -> Result<LayerBlob> {
        self.layer_blob_clamped(id, compression, None)
    }

    /// [`Store::layer_blob`] with file times clamped to `clamp_mtime` (`rewrite-timestamp`
    /// with `SOURCE_DATE_EPOCH`). Recorded per clamp value beside the plain blob, as BuildKit
    /// keeps one blob per compression: the plain blob of the same layer stays valid. A layer
    /// with nothing newer than the clamp keeps its plain blob (a pulled base layer stays
    /// byte-identical to the registry's).
    pub fn layer_blob_clamped(
        &self,
        id: &LayerId,
        compression: Compression,
        clamp_mtime: Option<u64>,
    ) -> Result<LayerBlob> {
        let key = blob_key(compression, clamp_mtime);
        if let Some(blob) = self.recorded_blob_at(id, &key)? {
            return Ok(blob);
        }
        // Another form is made from the files.
        self.unpack_layer(id)?;
        if let Some(max) = clamp_mtime {
            let newest = newest_mtime(&self.layer_dir(id))?;
            if newest.is_none_or(|n| n <= i64::try_from(max).unwrap_or(i64::MAX)) {
                let blob = self.layer_blob_clamped(id, compression, None)?;
                self.record_blob_at(id, &key, &blob)?;
                return Ok(blob);
            }
        }
        let tmp = self.tmp_path("tar");
        let mut file = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        let BlobDigests {
            diff_id,
            digest,
            size,
        } = write_layer_blob(&self.layer_dir(id), compression, clamp_mtime, &mut file)?;
        // Not synced (50-70 ms for a 100 MB layer): every reader of a blob checks it against
        // its digest (exports hash what they send, lazy layers unpack only a matching blob), and
        // an export that finds this blob torn by a crash drops it and makes it again from the
        // layer's files.
        let dest = self.blob_path(&digest);
        fs::rename(&tmp, &dest).map_err(io_err("rename", &dest))?;
        let blob = LayerBlob {
            diff_id,
            digest,
            size,
            media_type: compression.media_type().to_owned(),
        };
        self.record_blob_at(id, &key, &blob)?;
        Ok(blob)
    }

    fn blob_meta_path(&self, id: &LayerId, key: &str) -> PathBuf {
        self.root
            .join("layers")
            .join(&id.0)
            .join(format!("blob-{key}.json"))
    }

    /// The recorded exported form of a layer, if there is one and its blob is present.
    pub(crate) fn recorded_blob(
        &self,
        id: &LayerId,
        compression: Compression,
    ) -> Result<Option<LayerBlob>> {
        self.recorded_blob_at(id, &blob_key(compression, None))
    }

    fn recorded_blob_at(&self, id: &LayerId, key: &str) -> Result<Option<LayerBlob>> {
        let meta = self.blob_meta_path(id, key);
        let Ok(bytes) = fs::read(&meta) else {
            return Ok(None);
        };
        let blob: LayerBlob = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: meta.clone(),
            why: e.to_string(),
        })?;
        Ok(self.has_blob(&blob.digest).then_some(blob))
    }

    /// Records `blob` as the exported form of layer `id` (atomically: readers see the old
    /// record or the new one).
    pub(crate) fn record_blob(
        &self,
        id: &LayerId,
        compression: Compression,
        blob: &LayerBlob,
    ) -> Result<()> {
        self.record_blob_at(id, &blob_key(compression, None), blob)
    }

    fn record_blob_at(&self, id: &LayerId, key: &str, blob: &LayerBlob) -> Result<()> {
        let meta = self.blob_meta_path(id, key);
        let json = serde_json::to_vec(blob).map_err(|e| Error::Corrupt {
            path: meta.clone(),
            why: e.to_string(),
        })?;
        self.write_atomically(&meta, &json)
    }

    /// Looks `digest` up in the import index `kind` (`by-diff-id` or `by-blob`).
    pub(crate) fn index_get(&self, kind: &str, digest: &Digest) -> Result<Option<String>> {
        let p = self.root.join("layers").join(kind).join(digest.hex());
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    /// Writes `value` under `digest` in the import index `kind`.
    pub(crate) fn index_put(&self, kind: &str, digest: &Digest, value: &str) -> Result<()> {
        let p = self.root.join("layers").join(kind).join(digest.hex());
        self.write_atomically(&p, value.as_bytes())
    }

    fn write_atomically(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        // The temp file lives under tmp/ so a crash leaves nothing beside the real entries.
        let tmp = self.tmp_path("meta");
        fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, dest).map_err(io_err("rename", dest))
    }
}

/// A blob being written into the store; see [`Store::blob_writer`].
pub struct BlobWriter {
    out: HashingFile,
    tmp: PathBuf,
    store: Store,
    done: bool,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.out.hash.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes the blob. With `expected`, a content mismatch is an error and nothing is
    /// published (a registry or a file sent something else than announced).
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<Digest> {
        self.out
            .file
            .sync_all()
            .map_err(io_err("sync", &self.tmp))?;
        let digest = self.out.hash.clone().finish();
        if let Some(want) = expected {
            if *want != digest {
                return Err(Error::Corrupt {
                    path: self.tmp.clone(),
                    why: format!("content has digest {digest}, expected {want}"),
                });
            }
        }
        let dest = self.store.blob_path(&digest);
        fs::rename(&self.tmp, &dest).map_err(io_err("rename", &dest))?;
        self.done = true;
        Ok(digest)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

struct HashingFile {
    file: fs::File,
    hash: Sha256Writer,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl LayerBuilder {
    /// Where to write the layer's files.
    pub fn fs_dir(&self) -> PathBuf {
        self.dir.join("fs")
    }

    /// The private directory of this layer (overlay's workdir goes here).
    pub fn private_dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the layer permanent and visible.
    pub fn commit(mut self) -> Result<LayerId> {
        let id = LayerId(unique_name());
        let work = self.dir.join("work");
        if work.exists() {
            fs::remove_dir_all(&work).map_err(io_err("remove", &work))?;
        }
        let dest = self.store.root.join("layers").join(&id.0);
        fs::rename(&self.dir, &dest).map_err(io_err("rename", &dest))?;
        self.committed = true;
        Ok(id)
    }
}

impl Drop for LayerBuilder {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover tmp dir is harmless and is swept by GC later.
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::other(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_of_the_other_mode_is_refused_saying_which_and_where() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("store");
        fs::create_dir_all(root.join("tmp")).unwrap();
        // A new store records the flavour of the kiln that made it, which opens it again.
        check_opaque_xattr(&root, "s1", "user.overlay.opaque").unwrap();
        assert_eq!(
            fs::read_to_string(root.join(OPAQUE_RECORD)).unwrap(),
            "user.overlay.opaque"
        );
        check_opaque_xattr(&root, "s1", "user.overlay.opaque").unwrap();
        // kiln as root on a rootless store, and the reverse.
        let err = check_opaque_xattr(&root, "s1", "trusted.overlay.opaque")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("was made by rootless kiln")
                && err.contains("runs as root")
                && err.contains("/var/lib/kiln")
                && err.contains(&root.display().to_string()),
            "{err}"
        );
        fs::write(root.join(OPAQUE_RECORD), "trusted.overlay.opaque").unwrap();
        let err = check_opaque_xattr(&root, "s1", "user.overlay.opaque")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("was made by kiln as root")
                && err.contains("runs rootless")
                && err.contains("~/.local/share/kiln"),
            "{err}"
        );
    }

    #[test]
    fn opening_a_store_records_this_process_s_flavour() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open_with(d.path().join("s"), SnapshotterKind::Copy).unwrap();
        assert_eq!(
            fs::read_to_string(store.root().join(OPAQUE_RECORD)).unwrap(),
            crate::format::opaque_xattr()
        );
    }
}
