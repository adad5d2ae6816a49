//! What garbage collection needs from the store: the size of every layer and blob (apparent
//! sizes, as `du -sb` counts them), their deletion, and the protocol that keeps a running
//! build's layers and blobs from being deleted under it.
//!
//! The protocol. A build holds a [`Lease`] while it runs: a file under `leases/` on which it
//! keeps an exclusive `flock`, so the lease ends with the process, even one killed by SIGKILL.
//! Everything a build uses is *recent*: the layers and blobs it writes are new, and every
//! existing layer it takes from the cache is touched (its directory's mtime set to now) as it
//! is taken. So a collector spares every layer and blob whose mtime is not older than the
//! oldest live lease ([`Store::protected_since`]). Taking (a lookup plus the touch) and
//! collecting (the choice plus the renames out of the store) exclude each other through one
//! lock file, `gc.lock`: takers hold it shared, a collector exclusive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_types::Digest;

use crate::store::{LayerBlob, LayerId, Store};
use crate::{io_err, Error, Result};

/// Store entries that are not layers or blobs, and are not GC's own: named by what they are.
const LEASES: &str = "leases";
const GC_LOCK: &str = "gc.lock";
/// The file caching a layer's `fs/` size (a committed layer's files never change), without
/// its regular files: those are listed in `fs.files` and counted once for the store.
const SIZE_FILE: &str = "fs.size";
/// Every regular file of a layer's `fs/`, each inode once: `dev`, `ino`, `size`, 8 bytes each,
/// little-endian. Listing them all, not only those of several links when measured, keeps the
/// cache true when a later layer hard links to one of them (an edit's context layer, a COPY):
/// the link adds a holder, found in the new layer's list, and changes nothing here.
const FILES_FILE: &str = "fs.files";
/// The bytes of a layer's `fs/` counted alone (`own` plus every listed file), as a decimal:
/// an upper bound of what the layer adds to the store, whatever it shares. True whenever
/// written (a layer's files never change), read by [`Store::usage_bound`] instead of the list.
const TOTAL_FILE: &str = "fs.total";
/// The older form of the list: only the regular files that had more than one link when the
/// layer was measured; `fs.size` then counts the others. Read, never written; forgotten (and
/// the layer measured again) when a new layer links to one of its files.
const LINKS_FILE: &str = "fs.links";
/// A margin of safety: the lease's start and the layers' mtimes both come from the kernel's
/// coarse file-system clock (a tick or two of error), but the wall clock may be stepped.
const CLOCK_SLACK: Duration = Duration::from_millis(100);

/// One layer as GC sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerUsage {
    /// Bytes of the layer directory (files, metadata, the directories themselves).
    pub size: u64,
    /// The blobs recorded as its exported forms.
    pub blobs: Vec<Digest>,
    /// Last time it was written or taken by a build.
    pub mtime: SystemTime,
}

/// One blob as GC sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobUsage {
    /// Its size.
    pub size: u64,
    /// When it was written.
    pub mtime: SystemTime,
}

/// The whole store, measured.
#[derive(Clone, Debug, Default)]
pub struct StoreUsage {
    /// Every committed layer.
    pub layers: BTreeMap<LayerId, LayerUsage>,
    /// Every blob.
    pub blobs: BTreeMap<Digest, BlobUsage>,
    /// The store's own bookkeeping: its directories, the import indexes, leases, `tmp/`.
    pub internal: u64,
    /// The other top-level entries (the cache index, cache mounts...), by name, with their
    /// sizes. Their owners break them down.
    pub others: BTreeMap<OsString, u64>,
}

impl StoreUsage {
    /// Everything, as `du -sb` of the store root counts it.
    pub fn total(&self) -> u64 {
        self.layers.values().map(|l| l.size).sum::<u64>()
            + self.blobs.values().map(|b| b.size).sum::<u64>()
            + self.internal
            + self.others.values().sum::<u64>()
    }
}

/// The apparent size of `path` and everything under it (symlinks not followed; a file with
/// several links inside the tree counted once), as `du -sbx` counts it: a running build's
/// mounts (overlay views, secret tmpfs) are not the store's bytes. Entries that vanish while
/// it walks count as nothing.
pub fn tree_size(path: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    tree_size_in(path, None, &mut seen)
}

fn tree_size_in(path: &Path, dev: Option<u64>, seen: &mut HashSet<(u64, u64)>) -> Result<u64> {
    walk_sizes(path, dev, seen, &mut |_, _| false)
}

/// Sums the apparent sizes under `path` (one device, each inode once), except the regular
/// files that `shared(key, size)` takes (returning true) to count elsewhere.
fn walk_sizes(
    path: &Path,
    dev: Option<u64>,
    seen: &mut HashSet<(u64, u64)>,
    shared: &mut dyn FnMut((u64, u64), u64) -> bool,
) -> Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    walk_sizes_of(path, meta, dev, seen, shared)
}

/// [`walk_sizes`] of `path`, whose metadata `meta` the caller has. Entries are stat'ed relative
/// to their directory's open descriptor (as `lstat`): the kernel looks up one name, not every
/// component of the path again (most of a layer walk's system time went to those lookups).
fn walk_sizes_of(
    path: &Path,
    meta: fs::Metadata,
    dev: Option<u64>,
    seen: &mut HashSet<(u64, u64)>,
    shared: &mut dyn FnMut((u64, u64), u64) -> bool,
) -> Result<u64> {
    if dev.is_some_and(|d| d != meta.dev()) {
        return Ok(0);
    }
    if !meta.is_dir() {
        let key = (meta.dev(), meta.ino());
        if (meta.nlink() > 1 && !seen.insert(key)) || (meta.is_file() && shared(key, meta.len())) {
            return Ok(0);
        }
    }
    let mut size = meta.len();
    if meta.is_dir() {
        let entries = match fs::read_dir(path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("read directory", path)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", path))?;
            let child = entry.path();
            let child_meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", &child)(e)),
            };
            size += walk_sizes_of(&child, child_meta, Some(meta.dev()), seen, shared)?;
        }
    }
    Ok(size)
}

/// `(dev, ino)` and size of each regular file in a layer (in the older form: of several links).
type SharedFiles = Vec<((u64, u64), u64)>;

/// A map keyed by inode, `(dev, ino)`. A store's lists hold a million of them (50 layers of a
/// 20,000-file context) and the collection after each build, a no-op's included, counts them:
/// SipHash, built to resist chosen keys, was a third of a no-op build's CPU time. Inode numbers
/// are the kernel's, not an attacker's.
type InodeMap<V> = HashMap<(u64, u64), V, std::hash::BuildHasherDefault<InodeHasher>>;

/// A multiply-rotate hash of whole words (the Fx hash), for [`InodeMap`].
#[derive(Default)]
struct InodeHasher(u64);

impl std::hash::Hasher for InodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A layer's `fs/` measured: the bytes of all but its regular files, and its regular files.
#[derive(Debug, Default)]
struct FsSize {
    own: u64,
    shared: SharedFiles,
}

impl FsSize {
    fn encode_links(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.shared.len() * 24);
        for ((dev, ino), size) in &self.shared {
            for n in [dev, ino, size] {
                b.extend_from_slice(&n.to_le_bytes());
            }
        }
        b
    }

    fn decode_links(b: &[u8]) -> Option<SharedFiles> {
        if !b.len().is_multiple_of(24) {
            return None;
        }
        let n = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
        Some(
            b.chunks_exact(24)
                .map(|c| ((n(&c[..8]), n(&c[8..16])), n(&c[16..])))
                .collect(),
        )
    }
}

/// A name no other process or call uses: pid, time, counter.
fn unique_name() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{t}-{n}", std::process::id())
}

fn mtime(meta: &fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A running build's claim on the store; see the module documentation. Dropped, it ends.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    _file: fs::File,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Removed before the lock goes with the file, so a collector never reads it as stale
        // while this process still runs.
        let _ = fs::remove_file(&self.path);
    }
}

/// The store-wide `gc.lock`, held shared by a build taking a layer and exclusively by a
/// collector. Released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: fs::File,
}

/// Where a collector moves what it deletes: out of the store's namespace at once (renames,
/// under the lock), removed from disk after the lock is released. Removed when dropped.
#[derive(Debug)]
pub struct Trash {
    dir: PathBuf,
    n: u64,
}

impl Trash {
    fn take(&mut self, path: &Path) -> Result<bool> {
        self.n += 1;
        let dest = self.dir.join(self.n.to_string());
        match fs::rename(path, &dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("move to the trash", path)(e)),
        }
    }

    /// Deletes what was moved here.
    pub fn empty(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        if dir.exists() {
            return Err(Error::Corrupt {
                path: dir,
                why: "the GC trash could not be removed".into(),
            });
        }
        Ok(())
    }
}

impl Drop for Trash {
    fn drop(&mut self) {
        let _ = make_writable_and_remove(&self.dir);
    }
}

/// `remove_dir_all`, after giving the owner write access to directories a layer made
/// read-only (a non-root store cannot delete inside a `dr-x` directory otherwise).
fn make_writable_and_remove(dir: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            fn open_up(p: &Path) {
                use std::os::unix::fs::PermissionsExt;
                let Ok(meta) = fs::symlink_metadata(p) else {
                    return;
                };
                if meta.is_dir() {
                    let mode = meta.permissions().mode() | 0o700;
                    let _ = fs::set_permissions(p, fs::Permissions::from_mode(mode));
                    if let Ok(entries) = fs::read_dir(p) {
                        for e in entries.flatten() {
                            open_up(&e.path());
                        }
                    }
                }
            }
            open_up(dir);
            fs::remove_dir_all(dir)
        }
    }
}

fn open_lock_file(path: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open", path))
}

impl Store {
    /// Starts a lease for a build; see the module documentation.
    pub fn lease(&self) -> Result<Lease> {
        let dir = self.root().join(LEASES);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let path = dir.join(unique_name());
        let file = open_lock_file(&path)?;
        file.lock().map_err(io_err("lock", &path))?;
        Ok(Lease { path, _file: file })
    }

    /// The time from which layers and blobs are spared because a running build may use them:
    /// the start of the oldest live lease (less a margin), or `None` when no build runs.
    /// Leases of processes that ended are removed.
    pub fn protected_since(&self) -> Result<Option<SystemTime>> {
        let dir = self.root().join(LEASES);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read directory", &dir)(e)),
        };
        let mut oldest: Option<SystemTime> = None;
        for entry in entries {
            let path = entry.map_err(io_err("read directory", &dir))?.path();
            let Ok(file) = fs::File::open(&path) else {
                continue; // ended meanwhile
            };
            let started = file.metadata().map(|m| mtime(&m));
            match file.try_lock_shared() {
                Ok(()) => {
                    // Nobody holds it: its build ended without removing it (killed).
                    let _ = fs::remove_file(&path);
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let started = started.map_err(io_err("stat", &path))?;
                    oldest = Some(oldest.map_or(started, |o| o.min(started)));
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
            }
        }
        Ok(oldest.map(|t| t.checked_sub(CLOCK_SLACK).unwrap_or(SystemTime::UNIX_EPOCH)))
    }

    /// Holds `gc.lock` shared: while it is held, no collector chooses or moves anything.
    pub fn use_lock(&self) -> Result<StoreLock> {
        let path = self.root().join(GC_LOCK);
        let file = open_lock_file(&path)?;
        file.lock_shared().map_err(io_err("lock", &path))?;
        Ok(StoreLock { _file: file })
    }

    /// Holds `gc.lock` exclusively, for a collector.
    pub fn gc_lock(&self) -> Result<StoreLock> {
        let path = self.root().join(GC_LOCK);
        let file = open_lock_file(&path)?;
        file.lock().map_err(io_err("lock", &path))?;
        Ok(StoreLock { _file: file })
    }

    /// Marks a layer as used now, so that a collector spares it while this build runs. Call
    /// it under [`Store::use_lock`], before relying on the layer.
    pub fn touch_layer(&self, id: &LayerId) -> Result<()> {
        let dir = self.root().join("layers").join(&id.0);
        let now = nix::sys::time::TimeSpec::UTIME_NOW;
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &dir,
            &now,
            &now,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )
        .map_err(|e| io_err("touch", &dir)(std::io::Error::from(e)))
    }

    /// Measures the store. A layer's `fs/` is walked once and its size kept beside it (the
    /// layer's mtime, which says when a build last took it, is kept as it was). Call it under
    /// [`Store::gc_lock`], so that no build touches a layer meanwhile.
    pub fn usage(&self) -> Result<StoreUsage> {
        self.wait_for_measures();
        let root = self.root();
        let mut usage = StoreUsage::default();
        let root_meta = fs::symlink_metadata(root).map_err(io_err("stat", root))?;
        usage.internal += root_meta.len();
        for entry in fs::read_dir(root).map_err(io_err("read directory", root))? {
            let entry = entry.map_err(io_err("read directory", root))?;
            let name = entry.file_name();
            let path = entry.path();
            match name.to_str() {
                Some("blobs") => self.blob_usage(&path, &mut usage)?,
                Some("layers") => self.layer_usage(&path, &mut usage)?,
                // Lock files of live builds: their sessions, leases and running steps.
                Some("tmp" | LEASES | GC_LOCK | "sessions" | "running") => {
                    usage.internal += tree_size(&path)?
                }
                _ => {
                    usage.others.insert(name, tree_size(&path)?);
                }
            }
        }
        Ok(usage)
    }

    /// An upper bound of [`Store::usage`]'s total, without reading the layers' file lists:
    /// each layer counted as if it shared no file (its `fs.total`). None when a layer has no
    /// `fs.total` (measured by an older kiln, or not yet): then only `usage` tells. The
    /// collection after a build reads this first: a store under its limit by this bound needs
    /// no more (the lists of a store of 50 edits of a 20,000-file context are a million
    /// entries, read after every build before).
    pub fn usage_bound(&self) -> Result<Option<u64>> {
        self.wait_for_measures();
        let root = self.root();
        let mut total = fs::symlink_metadata(root)
            .map_err(io_err("stat", root))?
            .len();
        for entry in fs::read_dir(root).map_err(io_err("read directory", root))? {
            let entry = entry.map_err(io_err("read directory", root))?;
            let path = entry.path();
            match entry.file_name().to_str() {
                Some("blobs") => {
                    let mut usage = StoreUsage::default();
                    self.blob_usage(&path, &mut usage)?;
                    total += usage.total();
                }
                Some("layers") => match self.layers_bound(&path)? {
                    Some(layers) => total += layers,
                    None => return Ok(None),
                },
                _ => total += tree_size(&path)?,
            }
        }
        Ok(Some(total))
    }

    /// The bytes under `layers/`, each layer's `fs/` by its `fs.total`; None when one has none.
    fn layers_bound(&self, layers: &Path) -> Result<Option<u64>> {
        let mut total = tree_size_shallow(layers)?;
        for entry in fs::read_dir(layers).map_err(io_err("read directory", layers))? {
            let entry = entry.map_err(io_err("read directory", layers))?;
            let path = entry.path();
            let is_layer = entry
                .file_name()
                .to_str()
                .map(|s| LayerId(s.to_owned()))
                .filter(|id| !matches!(id.0.as_str(), "by-diff-id" | "by-blob"))
                .is_some_and(|id| self.has_layer(&id));
            if !is_layer {
                total += tree_size(&path)?;
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            total += meta.len();
            for e in fs::read_dir(&path).map_err(io_err("read directory", &path))? {
                let e = e.map_err(io_err("read directory", &path))?;
                if e.file_name() == "fs" {
                    let alone = fs::read_to_string(path.join(TOTAL_FILE))
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok());
                    match alone {
                        Some(n) => total += n,
                        None => return Ok(None),
                    }
                } else {
                    total += tree_size(&e.path())?;
                }
            }
        }
        Ok(Some(total))
    }

    fn blob_usage(&self, blobs: &Path, usage: &mut StoreUsage) -> Result<()> {
        usage.internal += tree_size_shallow(blobs)?;
        let dir = blobs.join("sha256");
        usage.internal += tree_size_shallow(&dir)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read directory", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let Ok(meta) = entry.metadata() else { continue };
            let digest = entry
                .file_name()
                .to_str()
                .and_then(|h| Digest::from_hex(h).ok());
            match digest {
                Some(d) if meta.is_file() => {
                    usage.blobs.insert(
                        d,
                        BlobUsage {
                            size: meta.len(),
                            mtime: mtime(&meta),
                        },
                    );
                }
                // Not a blob kiln wrote: counted, never deleted by GC.
                _ => usage.internal += tree_size(&entry.path())?,
            }
        }
        Ok(())
    }

    fn layer_usage(&self, layers: &Path, usage: &mut StoreUsage) -> Result<()> {
        usage.internal += tree_size_shallow(layers)?;
        // Files hard-linked between layers (an unchanged context file, a COPY of one) are one
        // inode: `du -sb` counts each once, so each is split between the layers that hold it.
        let mut shared: Vec<(LayerId, SharedFiles)> = Vec::new();
        let mut found = Vec::new();
        for entry in fs::read_dir(layers).map_err(io_err("read directory", layers))? {
            let entry = entry.map_err(io_err("read directory", layers))?;
            let name = entry.file_name();
            let path = entry.path();
            let Some(id) = name.to_str().map(|s| LayerId(s.to_owned())) else {
                usage.internal += tree_size(&path)?;
                continue;
            };
            if matches!(id.0.as_str(), "by-diff-id" | "by-blob") || !self.has_layer(&id) {
                usage.internal += tree_size(&path)?;
                continue;
            }
            found.push((id, path));
        }
        // The layers not yet measured (those a build just made) are walked side by side.
        let mut sizes = measure_all(&found)?.into_iter();
        for (id, path) in found {
            let mut fs_size = sizes.next().flatten();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let mut size = meta.len();
            let mut blobs = Vec::new();
            for e in fs::read_dir(&path).map_err(io_err("read directory", &path))? {
                let e = e.map_err(io_err("read directory", &path))?;
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n == "fs" {
                    let Some(fs_size) = fs_size.take() else {
                        continue;
                    };
                    size += fs_size.own;
                    if !fs_size.shared.is_empty() {
                        shared.push((id.clone(), fs_size.shared));
                    }
                    continue;
                }
                size += tree_size(&e.path())?;
                if n.starts_with("blob-") && n.ends_with(".json") {
                    let blob: Option<LayerBlob> = fs::read(e.path())
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    if let Some(b) = blob {
                        if !blobs.contains(&b.digest) {
                            blobs.push(b.digest);
                        }
                    }
                }
            }
            usage.layers.insert(
                id,
                LayerUsage {
                    size,
                    blobs,
                    mtime: mtime(&meta),
                },
            );
        }
        // Size, holders, whether the remainder was given.
        let mut holders: InodeMap<(u64, u64, bool)> = InodeMap::default();
        holders.reserve(shared.first().map_or(0, |(_, f)| f.len()));
        for (_, files) in &shared {
            for (key, size) in files {
                holders.entry(*key).or_insert((*size, 0, false)).1 += 1;
            }
        }
        // Each holder gets an equal part; the first (by id) the remainder, so that the parts
        // add up to the file's size exactly.
        shared.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, files) in &shared {
            let mut part = 0;
            for (key, _) in files {
                let Some((size, n, given)) = holders.get_mut(key) else {
                    continue;
                };
                part += *size / *n;
                if !*given {
                    *given = true;
                    part += *size % *n;
                }
            }
            if let Some(l) = usage.layers.get_mut(id) {
                l.size += part;
            }
        }
        Ok(())
    }

    /// Measures layer `id` (a build just made it) on a thread of its own, so that the
    /// collection after the build finds its size cached instead of walking it then: the walk
    /// runs beside the build's next steps. A measure is true whenever it is taken (a layer's
    /// files never change; hard links to them made later are counted by the layers that make
    /// them). The next [`Store::usage`] in this process waits for it; one cut short (the
    /// process ends) leaves at worst a partial list without `fs.size`, measured again later.
    ///
    /// A layer whose maker recorded its total ([`Store::record_total`]) is not walked: the
    /// collection after the build reads only totals while the store is under its limit, and
    /// a full measure (`kiln du`, a collection above the limit) walks it then.
    pub fn measure_later(&self, id: &LayerId) {
        let dir = self.root().join("layers").join(&id.0);
        if dir.join(TOTAL_FILE).is_file() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("kiln-measure".into())
            .spawn(move || {
                // Best effort: the collection measures it again if this fails.
                let _ = fs_size(&dir);
            });
        if let Ok(handle) = spawned {
            measuring().push((self.root().to_owned(), handle));
        }
    }

    /// Records `bytes` as the total of layer `id`'s `fs/` counted alone (what
    /// [`Store::usage_bound`] reads), from its maker, who knows the sizes of what it wrote:
    /// the context layer of an edit is 20,000 links, and walking it again to measure them cost
    /// as many `stat`s, waited for by the collection at the end of the build. It must be at
    /// least what a walk would count (an upper bound, as `fs.total` always is); the full
    /// measure (`fs.size`, `fs.files`) is left to the first collection that needs it.
    pub fn record_total(&self, id: &LayerId, bytes: u64) -> Result<()> {
        let dir = self.root().join("layers").join(&id.0);
        let before = fs::symlink_metadata(&dir).map_err(io_err("stat", &dir))?;
        let tmp = dir.join(format!("{TOTAL_FILE}.{}", unique_name()));
        let written = fs::write(&tmp, bytes.to_string().as_bytes())
            .and_then(|()| fs::rename(&tmp, dir.join(TOTAL_FILE)));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        // The layer directory's mtime is its last use for the collector: unchanged.
        restore_mtime(&dir, &before);
        written.map_err(io_err("write", &dir.join(TOTAL_FILE)))
    }

    /// Waits for the measures [`Store::measure_later`] started on this store.
    fn wait_for_measures(&self) {
        let mine: Vec<_> = {
            let mut all = measuring();
            let (mine, others) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|(root, _)| root.as_path() == self.root());
            *all = others;
            mine
        };
        for (_, handle) in mine {
            // A measure that panicked only leaves the layer to be walked now.
            let _ = handle.join();
        }
    }

    /// Forgets the cached size of layer `id`: a new layer just made hard links to its files,
    /// which it may have counted as its own (only a layer measured in the older form, with
    /// `fs.links`; one with `fs.files` keeps its cache). Holds `gc.lock` shared, so that a collector
    /// measuring right now does not write back what it measured before the links.
    pub fn forget_size(&self, id: &LayerId) -> Result<()> {
        let _lock = self.use_lock()?;
        let dir = self.root().join("layers").join(&id.0);
        let Ok(before) = fs::symlink_metadata(&dir) else {
            return Ok(());
        };
        // A full list stays true: the new holder is in the new layer's list.
        if dir.join(FILES_FILE).is_file() {
            return Ok(());
        }
        for name in [SIZE_FILE, LINKS_FILE] {
            match fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err("remove", &dir.join(name))(e))
                }
                _ => {}
            }
        }
        restore_mtime(&dir, &before);
        Ok(())
    }

    /// A fresh trash directory under `tmp/` for a collector.
    pub fn trash(&self) -> Result<Trash> {
        let dir = self.temp_dir("gc")?;
        Ok(Trash { dir, n: 0 })
    }

    /// Moves layer `id` to `trash` (see [`Store::sweep_import_indexes`] for the index entries
    /// that name it). Whether it was there.
    pub fn remove_layer(&self, id: &LayerId, trash: &mut Trash) -> Result<bool> {
        trash.take(&self.root().join("layers").join(&id.0))
    }

    /// Moves blob `digest` to `trash`. Whether it was there.
    pub fn remove_blob(&self, digest: &Digest, trash: &mut Trash) -> Result<bool> {
        trash.take(&self.blob_path(digest))
    }

    /// Removes the import index entries (`by-diff-id`, `by-blob`) that lead to no layer any
    /// more. Returns how many were removed.
    pub fn sweep_import_indexes(&self) -> Result<usize> {
        let mut removed = 0;
        let layers = self.root().join("layers");
        let by_diff = layers.join("by-diff-id");
        let mut live_diff_ids = HashSet::new();
        for entry in fs::read_dir(&by_diff).map_err(io_err("read directory", &by_diff))? {
            let entry = entry.map_err(io_err("read directory", &by_diff))?;
            let id = fs::read_to_string(entry.path()).unwrap_or_default();
            if self.has_layer(&LayerId(id.trim().to_owned())) {
                live_diff_ids.insert(entry.file_name());
            } else if fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        let by_blob = layers.join("by-blob");
        for entry in fs::read_dir(&by_blob).map_err(io_err("read directory", &by_blob))? {
            let entry = entry.map_err(io_err("read directory", &by_blob))?;
            let diff_id = fs::read_to_string(entry.path()).unwrap_or_default();
            if !live_diff_ids.contains(std::ffi::OsStr::new(diff_id.trim()))
                && fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// [`fs_size`] of each layer directory that has an `fs/` (None for one that has not), on a few
/// threads: a walk is syscall-bound, and after an edit there are two of 20,000 files.
fn measure_all(layers: &[(LayerId, PathBuf)]) -> Result<Vec<Option<FsSize>>> {
    let measure = |dir: &Path| -> Result<Option<FsSize>> {
        match fs::symlink_metadata(dir.join("fs")) {
            Ok(_) => fs_size(dir).map(Some),
            Err(_) => Ok(None),
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(layers.len());
    if threads <= 1 {
        return layers.iter().map(|(_, dir)| measure(dir)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Vec<(usize, Result<Option<FsSize>>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((_, dir)) = layers.get(i) else {
                            return done;
                        };
                        done.push((i, measure(dir)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a measuring thread does not panic"))
            .collect()
    });
    let mut all: Vec<Option<FsSize>> = (0..layers.len()).map(|_| None).collect();
    for (i, r) in results.into_iter().flatten() {
        all[i] = r?;
    }
    Ok(all)
}

/// The size of a layer's `fs/`, walked once and then read from `fs.size` and `fs.files` (or the
/// older `fs.links`).
fn fs_size(layer_dir: &Path) -> Result<FsSize> {
    let cached = layer_dir.join(SIZE_FILE);
    if let Some(own) = fs::read_to_string(&cached)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        let files = match fs::read(layer_dir.join(FILES_FILE)) {
            Ok(b) => FsSize::decode_links(&b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The older form. No list: a layer measured before lists existed, or with no
                // shared file.
                match fs::read(layer_dir.join(LINKS_FILE)) {
                    Ok(b) => FsSize::decode_links(&b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Vec::new()),
                    Err(_) => None,
                }
            }
            Err(_) => None,
        };
        if let Some(shared) = files {
            return Ok(FsSize { own, shared });
        }
    }
    count_walk(layer_dir);
    let mut shared = Vec::new();
    let own = walk_sizes(
        &layer_dir.join("fs"),
        None,
        &mut HashSet::new(),
        &mut |key, size| {
            shared.push((key, size));
            true
        },
    )?;
    let measured = FsSize { own, shared };
    // Best effort: a store someone else owns is still measured, only not cached.
    let before = fs::symlink_metadata(layer_dir).map_err(io_err("stat", layer_dir))?;
    let write = |name: &str, bytes: &[u8]| {
        let tmp = layer_dir.join(format!("{name}.{}", unique_name()));
        let written = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, layer_dir.join(name)));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.is_ok()
    };
    let gone = |name: &str| match fs::remove_file(layer_dir.join(name)) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    // `fs.size` says the cache is whole: out first (an older size counts the regular files the
    // new list names), back last.
    let alone = measured.own + measured.shared.iter().map(|(_, size)| size).sum::<u64>();
    let _ = write(TOTAL_FILE, alone.to_string().as_bytes());
    if gone(SIZE_FILE) && write(FILES_FILE, &measured.encode_links()) && gone(LINKS_FILE) {
        write(SIZE_FILE, measured.own.to_string().as_bytes());
    }
    restore_mtime(layer_dir, &before);
    Ok(measured)
}

/// The measures started by [`Store::measure_later`], by store root.
type Measures = Vec<(PathBuf, std::thread::JoinHandle<()>)>;

fn measuring() -> std::sync::MutexGuard<'static, Measures> {
    static MEASURING: std::sync::Mutex<Measures> = std::sync::Mutex::new(Vec::new());
    // Nothing panics while holding it; a poisoned list is still a list.
    MEASURING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The layer directories walked, for tests that a collection after a build walks no layer
/// whose size it had (tests run side by side: each looks for its own directories).
#[cfg(test)]
static WALKED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn count_walk(_layer_dir: &Path) {
    #[cfg(test)]
    WALKED
        .lock()
        .expect("no test panics holding it")
        .push(_layer_dir.to_owned());
}

/// Puts back a layer directory's times after its bookkeeping files changed: its mtime says when
/// a build last took it.
fn restore_mtime(dir: &Path, before: &fs::Metadata) {
    let at = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        dir,
        &at(before.atime(), before.atime_nsec()),
        &at(before.mtime(), before.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    );
}

/// The size of a directory entry itself, not its contents.
fn tree_size_shallow(path: &Path) -> Result<u64> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn du_sb(path: &Path) -> u64 {
        let out = std::process::Command::new("du")
            .arg("-sb")
            .arg(path)
            .output()
            .expect("du (coreutils) must be installed");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn usage_total_is_what_du_counts() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_with(t.path().join("s"), crate::SnapshotterKind::Copy).unwrap();
        let b = store.new_layer().unwrap();
        fs::write(b.fs_dir().join("a"), vec![1u8; 10_000]).unwrap();
        fs::create_dir(b.fs_dir().join("d")).unwrap();
        fs::write(b.fs_dir().join("d/x"), b"x").unwrap();
        fs::hard_link(b.fs_dir().join("a"), b.fs_dir().join("a2")).unwrap();
        let id = b.commit().unwrap();
        let blob = store
            .layer_blob(&id, crate::Compression::Uncompressed)
            .unwrap();
        store.write_blob(b"a config").unwrap();
        fs::create_dir(t.path().join("s/cache-mounts")).unwrap();
        fs::write(t.path().join("s/cache-mounts/f"), vec![0u8; 3000]).unwrap();
        let u = store.usage().unwrap();
        // The first measure writes the layer's cached size and its list of files of several
        // links (a few bytes it did not count).
        assert!(du_sb(&t.path().join("s")) - u.total() < 64);
        assert_eq!(u.layers[&id].blobs, vec![blob.digest]);
        assert_eq!(u.blobs.len(), 2);
        assert!(u.others.contains_key(std::ffi::OsStr::new("cache-mounts")));
        // The second measure reads the cached size, and agrees.
        assert!(t
            .path()
            .join("s/layers")
            .join(&id.0)
            .join(SIZE_FILE)
            .is_file());
        let again = store.usage().unwrap();
        assert_eq!(
            again.layers[&id].mtime, u.layers[&id].mtime,
            "the last use is kept"
        );
        assert_eq!(again.total(), du_sb(&t.path().join("s")));

        let mut trash = store.trash().unwrap();
        assert!(store.remove_layer(&id, &mut trash).unwrap());
        assert!(store.remove_blob(&blob.digest, &mut trash).unwrap());
        trash.empty().unwrap();
        assert!(!store.has_layer(&id) && !store.has_blob(&blob.digest));
        assert!(fs::read_dir(t.path().join("s/tmp"))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn layers_sharing_files_count_them_once_and_outlive_each_other() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("s");
        let store = Store::open_with(&root, crate::SnapshotterKind::Copy).unwrap();
        let big = |n: u8| vec![n; 100_000];
        let first = store.new_layer().unwrap();
        for n in 0..5u8 {
            fs::write(first.fs_dir().join(format!("f{n}")), big(n)).unwrap();
        }
        let first = first.commit().unwrap();
        // Measured while its files have one link each: all its own.
        store.usage().unwrap();
        assert_eq!(store.usage().unwrap().total(), du_sb(&root));
        // A second layer shares four of them and has one of its own, as an incremental
        // context layer does; a third shares two with both.
        let share = |from: &LayerId, names: &[&str], own: &str| {
            let b = store.new_layer().unwrap();
            for n in names {
                fs::hard_link(store.layer_dir(from).join(n), b.fs_dir().join(n)).unwrap();
            }
            fs::write(b.fs_dir().join(own), big(9)).unwrap();
            let id = b.commit().unwrap();
            store.forget_size(from).unwrap();
            id
        };
        let second = share(&first, &["f0", "f1", "f2", "f3"], "g");
        let third = share(&second, &["f0", "f1"], "h");
        for _ in 0..2 {
            // Measured, then read back from the cache: the same.
            let u = store.usage().unwrap();
            assert!(
                du_sb(&root).abs_diff(u.total()) < 400,
                "{} {}",
                du_sb(&root),
                u.total()
            );
        }
        let u = store.usage().unwrap();
        assert_eq!(u.total(), du_sb(&root));
        // Each shared file is split between its holders.
        assert!(u.layers[&third].size < u.layers[&second].size);
        // Deleting the first leaves the others whole, and the count still right.
        let mut trash = store.trash().unwrap();
        store.remove_layer(&first, &mut trash).unwrap();
        trash.empty().unwrap();
        for (id, names) in [
            (&second, &["f0", "f1", "f2", "f3", "g"][..]),
            (&third, &["f0", "f1", "h"]),
        ] {
            for n in names {
                let want = if n.starts_with('f') {
                    big(n.as_bytes()[1] - b'0')
                } else {
                    big(9)
                };
                assert_eq!(fs::read(store.layer_dir(id).join(n)).unwrap(), want, "{n}");
            }
        }
        let u = store.usage().unwrap();
        assert_eq!(u.total(), du_sb(&root));
        let mut trash = store.trash().unwrap();
        store.remove_layer(&second, &mut trash).unwrap();
        trash.empty().unwrap();
        assert_eq!(
            fs::read(store.layer_dir(&third).join("f1")).unwrap(),
            big(1)
        );
        assert_eq!(store.usage().unwrap().total(), du_sb(&root));
    }

    fn walked(dir: &Path) -> usize {
        WALKED
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.as_path() == dir)
            .count()
    }

    #[test]
    fn a_new_layer_linking_to_a_measured_one_leaves_its_cache_true_and_unwalked() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("s");
        let store = Store::open_with(&root, crate::SnapshotterKind::Copy).unwrap();
        let first = store.new_layer().unwrap();
        fs::create_dir(first.fs_dir().join("d")).unwrap();
        for n in 0..4u8 {
            fs::write(first.fs_dir().join(format!("d/f{n}")), vec![n; 50_000]).unwrap();
        }
        std::os::unix::fs::symlink("d/f0", first.fs_dir().join("l")).unwrap();
        let first = first.commit().unwrap();
        let first_dir = root.join("layers").join(&first.0);
        // Measured while each file has one link.
        assert_eq!(store.usage().unwrap().total(), du_sb(&root));
        assert_eq!(walked(&first_dir), 1);
        // As an edit's context layer: three files linked, one new.
        let b = store.new_layer().unwrap();
        fs::create_dir(b.fs_dir().join("d")).unwrap();
        for n in 0..3u8 {
            let name = format!("d/f{n}");
            fs::hard_link(store.layer_dir(&first).join(&name), b.fs_dir().join(&name)).unwrap();
        }
        fs::write(b.fs_dir().join("d/f3"), vec![9u8; 50_000]).unwrap();
        let second = b.commit().unwrap();
        let second_dir = root.join("layers").join(&second.0);
        store.forget_size(&first).unwrap();
        assert!(first_dir.join(SIZE_FILE).is_file(), "the cache is kept");
        let u = store.usage().unwrap();
        assert_eq!(
            walked(&first_dir),
            1,
            "the linked-to layer is not walked again"
        );
        assert_eq!(walked(&second_dir), 1);
        assert_eq!(u.total(), du_sb(&root));
        // The three shared files are split: each layer holds half of them and its own fourth.
        let own = |id: &LayerId| u.layers[id].size;
        assert!(
            own(&first) > 125_000 && own(&first) < 150_000,
            "{}",
            own(&first)
        );
        assert!(
            own(&second) > 125_000 && own(&second) < 150_000,
            "{}",
            own(&second)
        );
        // Read from the cache again: the same, no walk.
        assert_eq!(store.usage().unwrap().total(), du_sb(&root));
        assert_eq!(walked(&first_dir) + walked(&second_dir), 2);
    }

    #[test]
    fn a_layer_whose_maker_recorded_its_total_is_not_walked_after_the_build() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("s");
        let store = Store::open_with(&root, crate::SnapshotterKind::Copy).unwrap();
        let b = store.new_layer().unwrap();
        fs::create_dir(b.fs_dir().join("d")).unwrap();
        for n in 0..20u8 {
            fs::write(b.fs_dir().join(format!("d/f{n}")), vec![n; 100]).unwrap();
        }
        let id = b.commit().unwrap();
        let dir = root.join("layers").join(&id.0);
        let mtime = fs::symlink_metadata(&dir).unwrap().modified().unwrap();
        // What the maker knows: its files, and its directories' sizes.
        let dirs = du_sb(&dir.join("fs")) - 20 * 100;
        store.record_total(&id, dirs + 20 * 100).unwrap();
        store.measure_later(&id);
        let bound = store
            .usage_bound()
            .unwrap()
            .expect("every layer has its total");
        assert_eq!(walked(&dir), 0, "a recorded total is not measured again");
        assert!(bound >= du_sb(&root), "{bound} < {}", du_sb(&root));
        assert_eq!(
            fs::symlink_metadata(&dir).unwrap().modified().unwrap(),
            mtime,
            "recording a total is not a use"
        );
        // The full measure, when one is asked for, walks it, and agrees with `du -sb`.
        let u = store.usage().unwrap();
        assert_eq!(walked(&dir), 1);
        assert_eq!(u.total(), du_sb(&root));
    }

    #[test]
    fn a_layer_measured_beside_the_build_is_not_walked_by_the_collection() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("s");
        let store = Store::open_with(&root, crate::SnapshotterKind::Copy).unwrap();
        let b = store.new_layer().unwrap();
        fs::create_dir(b.fs_dir().join("d")).unwrap();
        for n in 0..50u8 {
            fs::write(
                b.fs_dir().join(format!("d/f{n}")),
                vec![n; 1000 + n as usize],
            )
            .unwrap();
        }
        let id = b.commit().unwrap();
        let dir = root.join("layers").join(&id.0);
        let mtime = fs::symlink_metadata(&dir).unwrap().modified().unwrap();
        store.measure_later(&id);
        // A later layer linking to it changes nothing of its measure.
        let b = store.new_layer().unwrap();
        fs::hard_link(dir.join("fs/d/f7"), b.fs_dir().join("f7")).unwrap();
        let second = b.commit().unwrap();
        store.forget_size(&id).unwrap();
        let u = store.usage().unwrap();
        assert_eq!(walked(&dir), 1, "measured once, beside the build");
        assert!(dir.join(SIZE_FILE).is_file() && dir.join(FILES_FILE).is_file());
        assert_eq!(u.total(), du_sb(&root));
        assert_eq!(u.layers[&id].mtime, mtime, "measuring is not a use");
        // What was written is what a walk finds.
        let cached = fs_size(&dir).unwrap();
        fs::remove_file(dir.join(SIZE_FILE)).unwrap();
        let walked_now = fs_size(&dir).unwrap();
        assert_eq!(cached.own, walked_now.own);
        let mut a = cached.shared;
        let mut b = walked_now.shared;
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert_eq!(a.len(), 50);
        // The linked file is split between the two: the second holds half of it.
        let second_du = du_sb(&root.join("layers").join(&second.0));
        assert!(u.layers[&second].size.abs_diff(second_du - 1007 / 2) <= 1);
    }

    #[test]
    fn the_bound_counts_shared_files_in_each_holder_and_reads_no_list() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("s");
        let store = Store::open_with(&root, crate::SnapshotterKind::Copy).unwrap();
        let b = store.new_layer().unwrap();
        fs::write(b.fs_dir().join("big"), vec![7u8; 100_000]).unwrap();
        let first = b.commit().unwrap();
        let first_dir = root.join("layers").join(&first.0);
        store.measure_later(&first);
        let b = store.new_layer().unwrap();
        fs::hard_link(first_dir.join("fs/big"), b.fs_dir().join("big")).unwrap();
        let second = b.commit().unwrap();
        store.measure_later(&second);
        let bound = store.usage_bound().unwrap().expect("both layers measured");
        let total = store.usage().unwrap().total();
        assert_eq!(total, du_sb(&root));
        // The shared file twice in the bound, once in the total.
        assert_eq!(bound - total, 100_000);
        // The lists are not read: a damaged one (which usage would walk again) changes
        // nothing, and nothing is walked.
        let list = fs::metadata(first_dir.join(FILES_FILE)).unwrap().len();
        fs::write(first_dir.join(FILES_FILE), b"bad").unwrap();
        let walks = walked(&first_dir);
        assert_eq!(store.usage_bound().unwrap(), Some(bound - list + 3));
        assert_eq!(walked(&first_dir), walks);
        // A layer without `fs.total` (an older kiln's): no bound.
        fs::remove_file(first_dir.join(TOTAL_FILE)).unwrap();
        assert_eq!(store.usage_bound().unwrap(), None);
    }

    #[test]
    fn a_layer_measured_in_the_older_form_is_forgotten_and_measured_again() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("s");
        let store = Store::open_with(&root, crate::SnapshotterKind::Copy).unwrap();
        let first = store.new_layer().unwrap();
        fs::write(first.fs_dir().join("f"), vec![1u8; 80_000]).unwrap();
        let first = first.commit().unwrap();
        let dir = root.join("layers").join(&first.0);
        // The older form: the file of one link counted in `fs.size`, no list.
        let own = fs::symlink_metadata(dir.join("fs")).unwrap().len() + 80_000;
        fs::write(dir.join(SIZE_FILE), own.to_string()).unwrap();
        assert_eq!(store.usage().unwrap().total(), du_sb(&root));
        assert_eq!(walked(&dir), 0);
        let b = store.new_layer().unwrap();
        fs::hard_link(dir.join("fs/f"), b.fs_dir().join("f")).unwrap();
        b.commit().unwrap();
        store.forget_size(&first).unwrap();
        assert!(!dir.join(SIZE_FILE).exists());
        assert_eq!(store.usage().unwrap().total(), du_sb(&root));
        assert_eq!(walked(&dir), 1);
        assert!(dir.join(FILES_FILE).is_file() && !dir.join(LINKS_FILE).exists());
    }

    #[test]
    fn leases_end_with_their_holder_and_protect_from_their_start() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_with(t.path().join("s"), crate::SnapshotterKind::Copy).unwrap();
        assert_eq!(store.protected_since().unwrap(), None);
        let lease = store.lease().unwrap();
        let since = store.protected_since().unwrap().expect("a live lease");
        assert!(since <= SystemTime::now());
        let layer = store.new_layer().unwrap().commit().unwrap();
        let u = store.usage().unwrap();
        assert!(u.layers[&layer].mtime >= since);
        drop(lease);
        assert_eq!(store.protected_since().unwrap(), None);
        // A lease file nobody holds (its process was killed) is stale and removed.
        fs::write(t.path().join("s/leases/12345-dead"), b"").unwrap();
        assert_eq!(store.protected_since().unwrap(), None);
        assert!(!t.path().join("s/leases/12345-dead").exists());
    }

    #[test]
    fn removing_read_only_directories_works_without_root() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_with(t.path().join("s"), crate::SnapshotterKind::Copy).unwrap();
        let b = store.new_layer().unwrap();
        fs::create_dir(b.fs_dir().join("ro")).unwrap();
        fs::write(b.fs_dir().join("ro/f"), b"f").unwrap();
        fs::set_permissions(b.fs_dir().join("ro"), fs::Permissions::from_mode(0o500)).unwrap();
        let id = b.commit().unwrap();
        let mut trash = store.trash().unwrap();
        store.remove_layer(&id, &mut trash).unwrap();
        trash.empty().unwrap();
        assert!(!store.has_layer(&id));
    }
}
