//! Garbage collection of the store, as BuildKit's cache manager prunes: `kiln du` (what the
//! store holds, record by record), `kiln prune` and the automatic collection after each build,
//! which keeps the store under a limit. Least recently used goes first; nothing a running
//! build uses is deleted (the leases of `kiln_snapshot::gc`).
//!
//! What is listed and deleted: layers (a cache record's result; a layer shared by several
//! records goes when the last of them goes, with the blobs only it names), cache mount
//! directories, and blobs no layer names (image configs and manifests of exports, pulled
//! configs). A record is deleted as a whole: its key from the index, then every layer and blob
//! that nothing else holds (mark and sweep from the remaining records).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_cache::{CacheIndex, ListedRecord};
use kiln_snapshot::gc::{StoreUsage, Trash};
use kiln_snapshot::{LayerId, SnapshotterKind, Store};
use kiln_types::Digest;

use crate::Error;

/// The most the default limit is: BuildKit's default keeps 10 % of the disk; kiln caps it.
pub const DEFAULT_KEEP_CAP: u64 = 20_000_000_000;

/// The automatic collection after each build (kiln.toml `[worker] gc`, `gckeepstorage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// Collect after each build.
    pub enabled: bool,
    /// Keep the store at most this large; `None`: 10 % of the store's disk, at most 20 GB.
    pub keep_storage: Option<u64>,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            enabled: true,
            keep_storage: None,
        }
    }
}

/// The default limit for a store at `root`: 10 % of its file system, at most
/// [`DEFAULT_KEEP_CAP`].
pub fn default_keep_storage(root: &Path) -> u64 {
    keep_storage_percent(root, 10).min(DEFAULT_KEEP_CAP)
}

/// `percent` % of the file system holding the store at `root` (20 GB when it cannot be
/// measured).
pub fn keep_storage_percent(root: &Path, percent: u8) -> u64 {
    // The store may not exist yet: measure the nearest directory that does.
    let mut dir = root.to_path_buf();
    while !dir.exists() && dir.pop() {}
    match nix::sys::statvfs::statvfs(&dir) {
        Ok(st) => st.blocks().saturating_mul(st.fragment_size()) / 100 * u64::from(percent),
        Err(_) => DEFAULT_KEEP_CAP,
    }
}

/// One line of `kiln du`: a layer, a cache mount, a blob, or the store's own bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageItem {
    /// The layer id, cache mount directory, blob digest (short) or an internal name.
    pub id: String,
    /// BuildKit's record types: `regular`, `source.local`, `exec.cachemount`, `internal`...;
    /// `content` for blobs no layer names.
    pub kind: String,
    /// Bytes on disk (apparent size, as `du -sb`).
    pub size: u64,
    /// A running build uses it (or it is the store's bookkeeping): not reclaimable.
    pub in_use: bool,
    /// Results of different steps build on it (two builds branch from it): deleting one of
    /// them does not free it.
    pub shared: bool,
    /// Last use, seconds since the epoch.
    pub last_used: Option<u64>,
    /// Creation, seconds since the epoch.
    pub created: Option<u64>,
    /// The step that made it.
    pub description: String,
    /// How many builds made or reused it.
    pub usage_count: u64,
}

/// What `kiln du` shows.
#[derive(Clone, Debug, Default)]
pub struct DiskUsage {
    /// Every item; their sizes add up to the store's size.
    pub items: Vec<UsageItem>,
}

impl DiskUsage {
    /// The store's size.
    pub fn total(&self) -> u64 {
        self.items.iter().map(|i| i.size).sum()
    }
}

/// What `kiln prune` removes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneOptions {
    /// Also the stat cache (the index file is compacted), as buildx's `--all` includes
    /// internal records.
    pub all: bool,
    /// Stop once the store is at most this large (`--keep-storage`).
    pub keep_storage: Option<u64>,
    /// Only what was not used for this long (`--filter until=24h`).
    pub until: Option<Duration>,
}

/// What a prune removed.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    /// The items removed, least recently used first.
    pub removed: Vec<UsageItem>,
}

impl PruneReport {
    /// Bytes freed.
    pub fn freed(&self) -> u64 {
        self.removed.iter().map(|i| i.size).sum()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the epoch: the order of use within one build matters.
fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_ms() -> u64 {
    ms(SystemTime::now())
}

/// Opens the store and index at `root` for `du`/`prune` (no overlay probe: nothing is mounted).
fn open(root: &Path) -> Result<(Store, CacheIndex), Error> {
    let store = Store::open_with(root, SnapshotterKind::Copy)?;
    let index = CacheIndex::open(&root.join("cache.redb"))?;
    Ok((store, index))
}

/// `kiln du` of the store at `root`.
pub fn disk_usage(root: &Path) -> Result<DiskUsage, Error> {
    let (store, index) = open(root)?;
    let _lock = store.gc_lock()?;
    let model = Model::read(&store, &index)?;
    Ok(model.usage())
}

/// `kiln prune` of the store at `root`.
pub fn prune(root: &Path, options: &PruneOptions) -> Result<PruneReport, Error> {
    let (store, index) = open(root)?;
    collect(&store, &index, options)
}

/// After a build: records the uses of the cache it made, then collects down to the limit when
/// the store is above it. What was removed, if anything.
pub(crate) fn after_build(
    store: &Store,
    index: &CacheIndex,
    policy: &GcPolicy,
) -> Result<Option<PruneReport>, Error> {
    index.flush_use(now_ms())?;
    if !policy.enabled {
        return Ok(None);
    }
    let keep = policy
        .keep_storage
        .unwrap_or_else(|| default_keep_storage(store.root()));
    let report = collect(
        store,
        index,
        &PruneOptions {
            all: false,
            keep_storage: Some(keep),
            until: None,
        },
    )?;
    Ok((!report.removed.is_empty()).then_some(report))
}

/// How a step's new record starts its use: one use, by the step named in the graph, of the
/// kind BuildKit would give it.
pub(crate) fn record_use(vertex: &kiln_graph::Vertex) -> kiln_cache::RecordUse {
    use kiln_graph::{Op, SourceOp};
    let kind = match &vertex.op {
        Op::Source(SourceOp::Local(_)) => "source.local",
        Op::Custom(c) if c.primitive == "git" => "source.git.checkout",
        _ => "regular",
    };
    kiln_cache::RecordUse {
        last_used_ms: now_ms(),
        usage_count: 1,
        description: vertex.meta.description.clone(),
        kind: kind.to_owned(),
    }
}

/// A cache mount directory (`cache-mounts/<id>[.pN]`) and its lock file.
struct Mount {
    name: String,
    dir: PathBuf,
    size: u64,
    last_used: SystemTime,
    /// Its lock, held exclusively while the collector looks: a build holding it uses it.
    lock: Option<std::fs::File>,
}

/// The store as the collector sees it, read under `gc.lock`.
struct Model {
    usage: StoreUsage,
    records: Vec<ListedRecord>,
    mounts: Vec<Mount>,
    /// Layers and blobs at least this recent may be used by a running build.
    since: Option<SystemTime>,
    cache_index_size: u64,
}

const CACHE_MOUNTS: &str = "cache-mounts";
const CACHE_INDEX: &str = "cache.redb";

impl Model {
    fn read(store: &Store, index: &CacheIndex) -> Result<Self, Error> {
        let since = store.protected_since()?;
        let records = index.list()?;
        let mut usage = store.usage()?;
        let cache_index_size = usage.others.remove(OsStr::new(CACHE_INDEX)).unwrap_or(0);
        let mut mounts = Vec::new();
        let dir = store.root().join(CACHE_MOUNTS);
        if let Some(all) = usage.others.remove(OsStr::new(CACHE_MOUNTS)) {
            let mut counted = 0;
            for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))? {
                let entry = entry.map_err(|e| Error::io("read", &dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                // A directory being created (`.ID.new-PID`) or a lock file: bookkeeping.
                if name.starts_with('.') || name.ends_with(".lock") || !path.is_dir() {
                    continue;
                }
                let size = kiln_snapshot::gc::tree_size(&path)?;
                counted += size;
                let lock_path = dir.join(format!("{name}.lock"));
                let lock = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&lock_path)
                    .ok()
                    .filter(|f| f.try_lock().is_ok());
                // The lock file's mtime is set at each use; a mount from before that: the
                // directory's.
                let last_used = std::fs::metadata(&lock_path)
                    .or_else(|_| std::fs::metadata(&path))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                mounts.push(Mount {
                    name,
                    dir: path,
                    size,
                    last_used,
                    lock,
                });
            }
            usage.internal += all.saturating_sub(counted);
        }
        Ok(Model {
            usage,
            records,
            mounts,
            since,
            cache_index_size,
        })
    }

    fn protected(&self, t: SystemTime) -> bool {
        self.since.is_some_and(|s| t >= s)
    }

    /// Live records (all layers present) by key, and for each layer the records holding it.
    fn references(&self) -> (Vec<&ListedRecord>, HashMap<&LayerId, Vec<usize>>) {
        let live: Vec<&ListedRecord> = self
            .records
            .iter()
            .filter(|r| {
                r.record
                    .snapshot
                    .layers
                    .iter()
                    .all(|l| self.usage.layers.contains_key(l))
            })
            .collect();
        let mut refs: HashMap<&LayerId, Vec<usize>> = HashMap::new();
        for (i, r) in live.iter().enumerate() {
            let layers: BTreeSet<&LayerId> = r.record.snapshot.layers.iter().collect();
            for l in layers {
                refs.entry(l).or_default().push(i);
            }
        }
        (live, refs)
    }

    /// Which layer each blob is counted with (the first, by id), and the blobs no layer names.
    fn blob_owners(&self) -> (BTreeMap<Digest, Vec<&LayerId>>, Vec<Digest>) {
        let mut owners: BTreeMap<Digest, Vec<&LayerId>> = BTreeMap::new();
        for (id, l) in &self.usage.layers {
            for b in &l.blobs {
                if self.usage.blobs.contains_key(b) {
                    owners.entry(*b).or_default().push(id);
                }
            }
        }
        let orphans = self
            .usage
            .blobs
            .keys()
            .filter(|b| !owners.contains_key(b))
            .copied()
            .collect();
        (owners, orphans)
    }

    fn layer_item(
        &self,
        id: &LayerId,
        live: &[&ListedRecord],
        refs: &HashMap<&LayerId, Vec<usize>>,
        owners: &BTreeMap<Digest, Vec<&LayerId>>,
    ) -> UsageItem {
        let l = &self.usage.layers[id];
        let holders: &[usize] = refs.get(id).map_or(&[], Vec::as_slice);
        let blob_bytes: u64 = l
            .blobs
            .iter()
            .filter(|b| owners.get(*b).and_then(|o| o.first()) == Some(&id))
            .filter_map(|b| self.usage.blobs.get(b))
            .map(|b| b.size)
            .sum();
        let top = holders
            .iter()
            .map(|&i| live[i])
            .find(|r| r.record.snapshot.layers.last() == Some(id));
        let last_used = holders
            .iter()
            .map(|&i| live[i].usage.last_used_ms / 1000)
            .max()
            .unwrap_or_else(|| unix(l.mtime));
        UsageItem {
            id: id.0.clone(),
            kind: top
                .map(|r| r.usage.kind.clone())
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| "regular".to_owned()),
            size: l.size + blob_bytes,
            in_use: self.protected(l.mtime),
            // Shared: results of different steps build on it (a base two builds branch from),
            // not merely the steps of one chain, each of which holds the layers below it.
            shared: {
                let next: BTreeSet<&LayerId> = holders
                    .iter()
                    .filter_map(|&i| {
                        let layers = &live[i].record.snapshot.layers;
                        let at = layers.iter().position(|l| l == id)?;
                        layers.get(at + 1)
                    })
                    .collect();
                next.len() > 1
            },
            last_used: Some(last_used),
            created: holders
                .iter()
                .map(|&i| live[i].record.created_unix)
                .min()
                .or(Some(unix(l.mtime))),
            description: match top {
                Some(r) => r.usage.description.clone(),
                None if holders.is_empty() => "a layer no cache record holds".to_owned(),
                None => String::new(),
            },
            usage_count: holders
                .iter()
                .map(|&i| live[i].usage.usage_count)
                .max()
                .unwrap_or(0),
        }
    }

    fn blob_item(&self, d: &Digest) -> UsageItem {
        let b = &self.usage.blobs[d];
        UsageItem {
            id: d.short(),
            kind: "content".to_owned(),
            size: b.size,
            // A running build may be about to read a config or manifest it resolved.
            in_use: self.since.is_some(),
            shared: false,
            last_used: Some(unix(b.mtime)),
            created: Some(unix(b.mtime)),
            description: "an image config, manifest or blob no layer names".to_owned(),
            usage_count: 0,
        }
    }

    fn mount_item(&self, m: &Mount) -> UsageItem {
        UsageItem {
            id: m.name.clone(),
            kind: "exec.cachemount".to_owned(),
            size: m.size,
            in_use: m.lock.is_none(),
            shared: false,
            last_used: Some(unix(m.last_used)),
            created: None,
            description: "a RUN --mount=type=cache directory".to_owned(),
            usage_count: 0,
        }
    }

    fn internal_items(&self) -> Vec<UsageItem> {
        let item = |id: &str, size, description: &str| UsageItem {
            id: id.to_owned(),
            kind: "internal".to_owned(),
            size,
            in_use: true,
            shared: false,
            last_used: None,
            created: None,
            description: description.to_owned(),
            usage_count: 0,
        };
        vec![
            item(
                CACHE_INDEX,
                self.cache_index_size,
                "the cache index and the context stat cache",
            ),
            item(
                "store",
                self.usage.internal + self.usage.others.values().sum::<u64>(),
                "the store's directories, import indexes, locks and temporaries",
            ),
        ]
    }

    fn usage(&self) -> DiskUsage {
        let (live, refs) = self.references();
        let (owners, orphans) = self.blob_owners();
        let mut items: Vec<UsageItem> = self
            .usage
            .layers
            .keys()
            .map(|id| self.layer_item(id, &live, &refs, &owners))
            .collect();
        items.extend(orphans.iter().map(|d| self.blob_item(d)));
        items.extend(self.mounts.iter().map(|m| self.mount_item(m)));
        // Most recently used first, as BuildKit lists records.
        items.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.id.cmp(&b.id)));
        items.extend(self.internal_items());
        DiskUsage { items }
    }
}

/// Something the collector may delete, in least recently used order.
enum Candidate {
    Record(usize),
    Mount(usize),
    Blob(Digest),
    Layer(LayerId),
}

/// Collects under `gc.lock`: chooses (least recently used first, nothing in use), moves out of
/// the store, then deletes from disk once the lock is released.
fn collect(
    store: &Store,
    index: &CacheIndex,
    options: &PruneOptions,
) -> Result<PruneReport, Error> {
    let mut trash: Option<Trash> = None;
    let report = {
        let _lock = store.gc_lock()?;
        // Under the limit even if no layer shared a file: nothing to read further.
        if let (Some(keep), false) = (options.keep_storage, options.all) {
            if store.usage_bound()?.is_some_and(|bound| bound <= keep) {
                return Ok(PruneReport::default());
            }
        }
        let model = Model::read(store, index)?;
        let mut total = model.usage.total() + model.cache_index_size;
        if options.keep_storage.is_some_and(|keep| total <= keep) && !options.all {
            return Ok(PruneReport::default());
        }
        let (live, refs) = model.references();
        let (owners, orphans) = model.blob_owners();
        let now = now_ms();
        let old_enough = |last_used_ms: u64| {
            options.until.is_none_or(|d| {
                last_used_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)) <= now
            })
        };

        // Candidates, each with its last use; what is in use never is one.
        let mut candidates: Vec<(u64, Candidate)> = Vec::new();
        for (i, r) in live.iter().enumerate() {
            let top_in_use = r
                .record
                .snapshot
                .layers
                .last()
                .is_some_and(|l| model.protected(model.usage.layers[l].mtime));
            if !top_in_use && old_enough(r.usage.last_used_ms) {
                candidates.push((r.usage.last_used_ms, Candidate::Record(i)));
            }
        }
        for (i, m) in model.mounts.iter().enumerate() {
            let t = ms(m.last_used);
            if m.lock.is_some() && old_enough(t) {
                candidates.push((t, Candidate::Mount(i)));
            }
        }
        if model.since.is_none() {
            for d in &orphans {
                let t = ms(model.usage.blobs[d].mtime);
                if old_enough(t) {
                    candidates.push((t, Candidate::Blob(*d)));
                }
            }
        }
        for (id, l) in &model.usage.layers {
            if !refs.contains_key(id) && !model.protected(l.mtime) && old_enough(ms(l.mtime)) {
                candidates.push((ms(l.mtime), Candidate::Layer(id.clone())));
            }
        }
        candidates.sort_by_key(|(t, _)| *t);

        // Reference counts, decremented as records go; a layer at zero goes with its blobs.
        let mut holders: HashMap<&LayerId, usize> =
            refs.iter().map(|(l, r)| (*l, r.len())).collect();
        let mut blob_holders: HashMap<Digest, usize> =
            owners.iter().map(|(b, o)| (*b, o.len())).collect();
        let mut dead_keys: Vec<Digest> = model
            .records
            .iter()
            .filter(|r| !live.iter().any(|l| l.key == r.key))
            .map(|r| r.key)
            .collect();
        let mut layers_out: Vec<LayerId> = Vec::new();
        let mut blobs_out: Vec<Digest> = Vec::new();
        let mut mounts_out: Vec<usize> = Vec::new();
        let mut removed: Vec<UsageItem> = Vec::new();
        let mut free_layer = |id: &LayerId,
                              layers_out: &mut Vec<LayerId>,
                              blobs_out: &mut Vec<Digest>,
                              removed: &mut Vec<UsageItem>|
         -> u64 {
            let item = model.layer_item(id, &live, &refs, &owners);
            let mut freed = model.usage.layers[id].size;
            for b in &model.usage.layers[id].blobs {
                if let Some(n) = blob_holders.get_mut(b) {
                    *n -= 1;
                    if *n == 0 {
                        freed += model.usage.blobs.get(b).map_or(0, |u| u.size);
                        blobs_out.push(*b);
                    }
                }
            }
            layers_out.push(id.clone());
            removed.push(UsageItem {
                size: freed,
                ..item
            });
            freed
        };
        // In passes, as BuildKit prunes a record only once no child holds it: a record whose
        // result is another's base waits for a later pass, unless a pass removed nothing.
        let mut pending: std::collections::VecDeque<Candidate> =
            candidates.into_iter().map(|(_, c)| c).collect();
        let mut deferred: Vec<Candidate> = Vec::new();
        let (mut progressed, mut force) = (false, false);
        loop {
            if options.keep_storage.is_some_and(|keep| total <= keep) {
                break;
            }
            let Some(c) = pending.pop_front() else {
                if deferred.is_empty() {
                    break;
                }
                // Records holding each other's layers: a pass that removed nothing lets the
                // least recently used go.
                force = !progressed;
                progressed = false;
                pending.extend(deferred.drain(..));
                continue;
            };
            if let Candidate::Record(i) = &c {
                let is_base = live[*i]
                    .record
                    .snapshot
                    .layers
                    .last()
                    .is_some_and(|top| holders.get(top).copied().unwrap_or(0) > 1);
                if is_base && !std::mem::take(&mut force) {
                    deferred.push(c);
                    continue;
                }
            }
            progressed = true;
            match c {
                Candidate::Record(i) => {
                    dead_keys.push(live[i].key);
                    let layers: BTreeSet<&LayerId> =
                        live[i].record.snapshot.layers.iter().collect();
                    for l in layers {
                        let n = holders
                            .get_mut(l)
                            .expect("every layer of a live record is held");
                        *n -= 1;
                        if *n == 0 && !model.protected(model.usage.layers[l].mtime) {
                            total = total.saturating_sub(free_layer(
                                l,
                                &mut layers_out,
                                &mut blobs_out,
                                &mut removed,
                            ));
                        }
                    }
                }
                Candidate::Layer(id) => {
                    total = total.saturating_sub(free_layer(
                        &id,
                        &mut layers_out,
                        &mut blobs_out,
                        &mut removed,
                    ));
                }
                Candidate::Mount(i) => {
                    mounts_out.push(i);
                    removed.push(model.mount_item(&model.mounts[i]));
                    total = total.saturating_sub(model.mounts[i].size);
                }
                Candidate::Blob(d) => {
                    blobs_out.push(d);
                    removed.push(model.blob_item(&d));
                    total = total.saturating_sub(model.usage.blobs[&d].size);
                }
            }
        }

        // The records first: a record never names a missing layer for long (a record with a
        // missing layer reads as a miss anyway).
        index.remove(&dead_keys)?;
        let t = trash.insert(store.trash()?);
        for id in &layers_out {
            store.remove_layer(id, t)?;
        }
        for d in &blobs_out {
            store.remove_blob(d, t)?;
        }
        for &i in &mounts_out {
            let m = &model.mounts[i];
            // Moved while its lock is held: no build can be using it.
            let dest = m.dir.with_file_name(format!(".{}.gc", m.name));
            std::fs::rename(&m.dir, &dest).map_err(|e| Error::io("remove", &m.dir, e))?;
            let _ = std::fs::remove_dir_all(&dest);
        }
        store.sweep_import_indexes()?;
        if options.all {
            let before = std::fs::metadata(store.root().join(CACHE_INDEX)).map_or(0, |m| m.len());
            index.clear_stat_and_compact()?;
            let after = std::fs::metadata(store.root().join(CACHE_INDEX)).map_or(0, |m| m.len());
            if before > after {
                removed.push(UsageItem {
                    id: CACHE_INDEX.to_owned(),
                    kind: "internal".to_owned(),
                    size: before - after,
                    in_use: false,
                    shared: false,
                    last_used: None,
                    created: None,
                    description: "the context stat cache, and the index's free pages".to_owned(),
                    usage_count: 0,
                });
            }
        }
        PruneReport { removed }
    };
    if let Some(t) = trash {
        t.empty()?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cache::{CacheRecord, RecordUse};
    use kiln_snapshot::Snapshot;

    struct Fixture {
        _t: tempfile::TempDir,
        root: PathBuf,
        store: Store,
        index: CacheIndex,
    }

    fn fixture() -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("store");
        let (store, index) = open(&root).unwrap();
        Fixture {
            _t: t,
            root,
            store,
            index,
        }
    }

    fn layer(store: &Store, bytes: usize) -> LayerId {
        let b = store.new_layer().unwrap();
        std::fs::write(b.fs_dir().join("f"), vec![7u8; bytes]).unwrap();
        b.commit().unwrap()
    }

    fn record(f: &Fixture, name: &str, layers: &[&LayerId], last_used: u64) -> Digest {
        let key = Digest::of(name.as_bytes());
        f.index
            .put_used(
                &key,
                &CacheRecord {
                    snapshot: Snapshot {
                        layers: layers.iter().map(|l| (*l).clone()).collect(),
                    },
                    created_unix: last_used,
                },
                &RecordUse {
                    last_used_ms: last_used * 1000,
                    usage_count: 1,
                    description: name.to_owned(),
                    kind: "regular".to_owned(),
                },
            )
            .unwrap();
        key
    }

    #[test]
    fn keep_storage_removes_least_recently_used_first_and_keeps_shared_layers() {
        let f = fixture();
        let base = layer(&f.store, 100_000);
        let old = layer(&f.store, 200_000);
        let new = layer(&f.store, 200_000);
        let k_base = record(&f, "base", &[&base], 1000);
        let k_old = record(&f, "old", &[&base, &old], 2000);
        let k_new = record(&f, "new", &[&base, &new], 3000);
        f.store
            .layer_blob(&old, kiln_snapshot::Compression::Uncompressed)
            .unwrap();
        let du = disk_usage(&f.root).unwrap();
        let total = du.total();
        assert!(total > 500_000, "{total}");
        let base_item = du.items.iter().find(|i| i.id == base.0).unwrap();
        assert!(base_item.shared && !base_item.in_use);
        // A layer only one chain builds on is the chain's own.
        assert!(!du.items.iter().find(|i| i.id == old.0).unwrap().shared);
        assert_eq!(base_item.description, "base");

        // Room for everything but one 200 kB layer (and its blob): the oldest record goes.
        // The base record is older, but its layer is held by the others: it frees nothing.
        let report = prune(
            &f.root,
            &PruneOptions {
                keep_storage: Some(total - 150_000),
                ..PruneOptions::default()
            },
        )
        .unwrap();
        let ids: Vec<&str> = report.removed.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, [old.0.as_str()]);
        assert!(
            report.freed() > 400_000,
            "layer and blob: {}",
            report.freed()
        );
        assert!(!f.store.has_layer(&old) && f.store.has_layer(&new) && f.store.has_layer(&base));
        assert!(f.index.get(&f.store, &k_old).unwrap().is_none());
        assert!(f.index.get(&f.store, &k_base).unwrap().is_some());
        assert!(f.index.get(&f.store, &k_new).unwrap().is_some());
        let du = disk_usage(&f.root).unwrap();
        assert!(du.total() <= total - 150_000);

        // Everything.
        let report = prune(&f.root, &PruneOptions::default()).unwrap();
        assert_eq!(report.removed.len(), 2);
        assert!(!f.store.has_layer(&base) && !f.store.has_layer(&new));
        assert!(f.index.list().unwrap().is_empty());
    }

    #[test]
    fn a_running_build_keeps_what_it_took_and_made() {
        let f = fixture();
        let taken = layer(&f.store, 50_000);
        let idle = layer(&f.store, 50_000);
        let k_taken = record(&f, "taken", &[&taken], 1000);
        record(&f, "idle", &[&idle], 1000);
        // Make both layers look old, as after a day.
        for l in [&taken, &idle] {
            let old = nix::sys::time::TimeSpec::new(1_000_000, 0);
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &f.root.join("layers").join(&l.0),
                &old,
                &old,
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            )
            .unwrap();
        }
        let lease = f.store.lease().unwrap();
        // The build takes `taken` from the cache and makes a new layer it has not recorded yet.
        assert!(f.index.get(&f.store, &k_taken).unwrap().is_some());
        let made = layer(&f.store, 10_000);
        let report = prune(&f.root, &PruneOptions::default()).unwrap();
        let ids: Vec<&str> = report.removed.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, [idle.0.as_str()]);
        assert!(f.store.has_layer(&taken) && f.store.has_layer(&made));
        let du = disk_usage(&f.root).unwrap();
        assert!(du.items.iter().find(|i| i.id == taken.0).unwrap().in_use);
        drop(lease);
        // Once the build is over, the layer nothing holds goes too.
        let report = prune(&f.root, &PruneOptions::default()).unwrap();
        let ids: BTreeSet<&str> = report.removed.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, BTreeSet::from([taken.0.as_str(), made.0.as_str()]));
    }

    #[test]
    fn cache_mounts_in_use_stay_and_until_spares_recent_use() {
        let f = fixture();
        let mounts = f.root.join(CACHE_MOUNTS);
        std::fs::create_dir_all(mounts.join("aaa")).unwrap();
        std::fs::write(mounts.join("aaa/f"), vec![1u8; 5000]).unwrap();
        std::fs::create_dir_all(mounts.join("bbb")).unwrap();
        std::fs::write(mounts.join("bbb/f"), vec![1u8; 5000]).unwrap();
        let held = std::fs::File::create(mounts.join("aaa.lock")).unwrap();
        held.lock().unwrap();
        std::fs::File::create(mounts.join("bbb.lock")).unwrap();
        let recent = prune(
            &f.root,
            &PruneOptions {
                until: Some(Duration::from_secs(3600)),
                ..PruneOptions::default()
            },
        )
        .unwrap();
        assert!(recent.removed.is_empty());
        let report = prune(&f.root, &PruneOptions::default()).unwrap();
        let ids: Vec<&str> = report.removed.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["bbb"]);
        assert!(mounts.join("aaa/f").is_file() && !mounts.join("bbb").exists());
    }

    #[test]
    fn default_limit_is_a_tenth_of_the_disk_capped() {
        let t = tempfile::tempdir().unwrap();
        let keep = default_keep_storage(&t.path().join("not/yet"));
        assert!(keep > 0 && keep <= DEFAULT_KEEP_CAP, "{keep}");
    }
}
