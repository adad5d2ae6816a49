//! The cache index: which snapshot a cache key produced, and the stat cache that lets an
//! unchanged local context cost one `stat` per file instead of a full read.
//!
//! Architecture invariant: records only; it never runs ops. Crash safety comes from redb's
//! transactions plus an ordering rule the engine follows: a layer is committed to the store
//! before the record that names it, so a visible record never points at a missing layer. A
//! record whose layers vanished anyway (manual deletion) reads as a miss.

use std::collections::HashMap;
use std::path::Path;

use kiln_snapshot::{LayerId, Snapshot, Store};
use kiln_types::Digest;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const RESULTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("results");
const STAT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("stat");
/// GC's bookkeeping per result key ([`RecordUse`]), beside the records so that their encoding
/// stays what it was.
const USAGE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("usage");
/// The last layer materialized from each local context (by its directory), with what each of
/// its files holds: the next materialization of that context links unchanged files from it.
const CONTEXT_LAYERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("context-layers");

/// Errors of the cache index.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("cache index {path}: {source}")]
    Db {
        /// The index file.
        path: String,
        /// Why.
        source: Box<redb::Error>,
    },
    /// Another process holds the index alone: a kiln from before the index was shared.
    #[error(
        "cache index {path}: held by another kiln process of an older version, which keeps it \
         to itself; let that build finish, then run this one again"
    )]
    HeldByOlderKiln {
        /// The index file.
        path: String,
    },
    /// The store's use lock could not be taken.
    #[error("cache index {path}: {source}")]
    Store {
        /// The index file.
        path: String,
        /// Why.
        source: kiln_snapshot::Error,
    },
    /// A new index file could not be made.
    #[error("cache index {path}: cannot create it: {source}")]
    Create {
        /// The index file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A record that cannot be decoded.
    #[error("cache index {path}: corrupt record: {source}")]
    Corrupt {
        /// The index file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a cache key produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The result filesystem.
    pub snapshot: Snapshot,
    /// When it was recorded (seconds since the epoch), for GC.
    pub created_unix: u64,
}

/// How a cache record has been used, for garbage collection (least recently used first) and
/// `kiln du`. Every field defaults, so that a record written before it existed reads as never
/// used since it was created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordUse {
    /// Last time a build produced or reused it (milliseconds since the epoch, so that the
    /// steps of one build keep their order); 0: never recorded.
    #[serde(default)]
    pub last_used_ms: u64,
    /// How many builds produced or reused it.
    #[serde(default)]
    pub usage_count: u64,
    /// The step that produced it (`[2/3] RUN make`).
    #[serde(default)]
    pub description: String,
    /// What kind of result it is, with BuildKit's record type names (`regular`,
    /// `source.local`, `source.git.checkout`...).
    #[serde(default)]
    pub kind: String,
}

/// A record with its use, as GC lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedRecord {
    /// The cache key.
    pub key: Digest,
    /// The record.
    pub record: CacheRecord,
    /// Its use.
    pub usage: RecordUse,
}

/// What the stat cache remembers of one context file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatRecord {
    /// Inode.
    pub ino: u64,
    /// Size.
    pub size: u64,
    /// mtime in nanoseconds.
    pub mtime_ns: i128,
    /// ctime in nanoseconds (catches chmod and in-place rewrites that restore mtime).
    pub ctime_ns: i128,
    /// Content hash.
    pub hash: Digest,
}

/// The index, one redb file shared by every kiln process on the store.
///
/// kiln has no daemon: two `kiln build`s on one store are two processes. The file is opened in
/// redb's multi-writer mode, made for that: each process keeps its handle for as long as it
/// runs, any number of them read at once, and a write transaction waits (in the kernel, on a
/// byte-range lock) only for another process's write transaction, which lasts one commit. No
/// timer, no close and reopen between steps: a step's lookups and records cost what the
/// transactions cost.
pub struct CacheIndex {
    path: String,
    /// Read-locked by every transaction (redb's handle is shared between threads); written
    /// only by compaction, which needs the handle to itself.
    db: std::sync::RwLock<redb::Database>,
    /// Keys found by [`CacheIndex::get`] since the last [`CacheIndex::flush_use`]: their use
    /// is written once per build, not once per lookup.
    hits: std::sync::Mutex<std::collections::BTreeSet<[u8; 32]>>,
}

/// The file backend of an index file being created under its temporary name, without redb's
/// flushes: redb flushes at each step of creating a file and at each commit (9 `fdatasync` for
/// a new index, the costliest calls of a build on a fresh store), but a file nobody can see yet
/// needs none of them. `create_whole` flushes it once, whole, before linking it into place, so
/// a crash at any point leaves either no index (the temporary is removed by the next kiln) or a
/// complete one.
#[derive(Debug)]
struct UnsyncedFile(redb::backends::FileBackend);

type BackendIo<T> = std::result::Result<T, std::io::Error>;
type Backend<T> = std::result::Result<T, redb::BackendError>;
type LockBound = std::ops::Bound<u64>;

impl redb::StorageBackend for UnsyncedFile {
    fn len(&self) -> BackendIo<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> BackendIo<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> BackendIo<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> BackendIo<()> {
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> BackendIo<()> {
        self.0.write(offset, data)
    }
    fn close(&self) -> BackendIo<()> {
        self.0.close()
    }
    fn try_lock_range(&self, start: LockBound, end: LockBound) -> Backend<bool> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: LockBound, end: LockBound) -> Backend<bool> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: LockBound, end: LockBound) -> Backend<()> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: LockBound, end: LockBound) -> Backend<()> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: LockBound, end: LockBound) -> Backend<()> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: LockBound, end: LockBound) -> Backend<bool> {
        self.0.query_lock_range(start, end)
    }
}

/// Creates a new index file at `path` whole: redb writes a new file's header last, so a kiln
/// killed while creating it in place would leave a file no later kiln can open. The file is
/// made under a temporary name beside `path` (its tables included) and linked into place; a
/// process that lost the race to another uses the other's. Temporaries of killed creators
/// (their pid gone) are removed.
fn create_whole(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let pid = file
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".new"));
            if let Some(pid) = pid {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let tmp = dir.join(format!("{prefix}{}.new", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let made = (|| -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let synced_once = file.try_clone()?;
        let mut builder = redb::Builder::new();
        builder.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
        let backend =
            UnsyncedFile(redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?);
        let db = builder
            .create_with_backend(backend)
            .map_err(std::io::Error::other)?;
        let tx = db.begin_write().map_err(std::io::Error::other)?;
        tx.open_table(RESULTS).map_err(std::io::Error::other)?;
        tx.open_table(STAT).map_err(std::io::Error::other)?;
        tx.open_table(USAGE).map_err(std::io::Error::other)?;
        tx.open_table(CONTEXT_LAYERS)
            .map_err(std::io::Error::other)?;
        tx.commit().map_err(std::io::Error::other)?;
        drop(db);
        // The one flush of the new file: everything redb wrote reaches the disk before the
        // file gets its real name.
        synced_once.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    made
}

impl CacheIndex {
    /// Opens or creates the index at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        if !path.exists() {
            create_whole(path).map_err(|e| Error::Create {
                path: shown.clone(),
                source: e,
            })?;
        }
        let mut builder = redb::Builder::new();
        builder.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
        let db = builder.create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen
            | redb::DatabaseError::LockProtocolMismatch => Error::HeldByOlderKiln {
                path: shown.clone(),
            },
            e => db_err(&shown, e),
        })?;
        let index = CacheIndex {
            path: shown,
            db: std::sync::RwLock::new(db),
            hits: std::sync::Mutex::default(),
        };
        // Create the tables up front so read transactions never see them missing; a commit
        // (and its flushes) only when one is missing, not at every start of kiln.
        index.with_db(|db| {
            let tx = db.begin_read().map_err(|e| index.err(e))?;
            let all = tx.open_table(RESULTS).is_ok()
                && tx.open_table(STAT).is_ok()
                && tx.open_table(USAGE).is_ok()
                && tx.open_table(CONTEXT_LAYERS).is_ok();
            if all {
                return Ok(());
            }
            let tx = db.begin_write().map_err(|e| index.err(e))?;
            tx.open_table(RESULTS).map_err(|e| index.err(e))?;
            tx.open_table(STAT).map_err(|e| index.err(e))?;
            tx.open_table(USAGE).map_err(|e| index.err(e))?;
            tx.open_table(CONTEXT_LAYERS).map_err(|e| index.err(e))?;
            tx.commit().map_err(|e| index.err(e))
        })?;
        Ok(index)
    }

    /// Runs `f` with the database.
    fn with_db<T>(&self, f: impl FnOnce(&redb::Database) -> Result<T>) -> Result<T> {
        let db = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&db)
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        db_err(&self.path, e)
    }

    /// The record for `key`, if present and all its layers still exist in `store`. A hit is
    /// remembered as a use, written by [`CacheIndex::flush_use`].
    ///
    /// The layers of a hit are touched under the store's use lock, so that a collector running
    /// at the same time spares them while this build runs (`kiln_snapshot::gc`).
    pub fn get(&self, store: &Store, key: &Digest) -> Result<Option<CacheRecord>> {
        let rec = self.with_db(|db| self.read_record(db, key))?;
        let Some(rec) = rec else { return Ok(None) };
        let _taking = store.use_lock().map_err(|source| Error::Store {
            path: self.path.clone(),
            source,
        })?;
        if !rec.snapshot.layers.iter().all(|l| store.has_layer(l)) {
            return Ok(None);
        }
        for layer in &rec.snapshot.layers {
            // A store this process may not write (another user's) is only read: no touch.
            let _ = store.touch_layer(layer);
        }
        self.hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(*key.as_bytes());
        Ok(Some(rec))
    }

    /// Records what `key` produced, with its use (durably, in one transaction).
    pub fn put_used(&self, key: &Digest, rec: &CacheRecord, usage: &RecordUse) -> Result<()> {
        let bytes = self.encode(rec)?;
        let use_bytes = self.encode(usage)?;
        self.with_db(|db| {
            let tx = db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut table = tx.open_table(RESULTS).map_err(|e| self.err(e))?;
                table
                    .insert(key.as_bytes().as_slice(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                let mut table = tx.open_table(USAGE).map_err(|e| self.err(e))?;
                table
                    .insert(key.as_bytes().as_slice(), use_bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }

    fn encode(&self, value: &impl Serialize) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|source| Error::Corrupt {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes the use of every key [`CacheIndex::get`] found since the last call: last used
    /// `now_ms` (milliseconds since the epoch), one more use. One transaction.
    pub fn flush_use(&self, now_ms: u64) -> Result<()> {
        let hits = std::mem::take(
            &mut *self
                .hits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if hits.is_empty() {
            return Ok(());
        }
        self.with_db(|db| {
            let tx = db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut table = tx.open_table(USAGE).map_err(|e| self.err(e))?;
                for key in &hits {
                    let mut usage: RecordUse = table
                        .get(key.as_slice())
                        .map_err(|e| self.err(e))?
                        .and_then(|v| serde_json::from_slice(v.value()).ok())
                        .unwrap_or_default();
                    usage.last_used_ms = usage.last_used_ms.max(now_ms);
                    usage.usage_count += 1;
                    let bytes = self.encode(&usage)?;
                    table
                        .insert(key.as_slice(), bytes.as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// Every record with its use (a record whose use was never written gets its creation time
    /// as last use). Records that do not decode are listed with an empty snapshot, so that GC
    /// can remove them.
    pub fn list(&self) -> Result<Vec<ListedRecord>> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.err(e))?;
            let results = tx.open_table(RESULTS).map_err(|e| self.err(e))?;
            let usage = tx.open_table(USAGE).map_err(|e| self.err(e))?;
            let mut out = Vec::new();
            for entry in results.iter().map_err(|e| self.err(e))? {
                let (k, v) = entry.map_err(|e| self.err(e))?;
                let Ok(bytes) = <[u8; 32]>::try_from(k.value()) else {
                    continue;
                };
                let record: CacheRecord =
                    serde_json::from_slice(v.value()).unwrap_or(CacheRecord {
                        snapshot: Snapshot::default(),
                        created_unix: 0,
                    });
                let mut used: RecordUse = usage
                    .get(k.value())
                    .map_err(|e| self.err(e))?
                    .and_then(|u| serde_json::from_slice(u.value()).ok())
                    .unwrap_or_default();
                if used.last_used_ms == 0 {
                    used.last_used_ms = record.created_unix.saturating_mul(1000);
                }
                out.push(ListedRecord {
                    key: Digest::from_bytes(bytes),
                    record,
                    usage: used,
                });
            }
            Ok(out)
        })
    }

    /// Removes the records (and their use) of `keys`, in one transaction.
    pub fn remove(&self, keys: &[Digest]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.with_db(|db| {
            let tx = db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut results = tx.open_table(RESULTS).map_err(|e| self.err(e))?;
                let mut usage = tx.open_table(USAGE).map_err(|e| self.err(e))?;
                for key in keys {
                    results
                        .remove(key.as_bytes().as_slice())
                        .map_err(|e| self.err(e))?;
                    usage
                        .remove(key.as_bytes().as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// Empties the stat cache (the next build hashes its context files again), then gives the
    /// file's free pages back to the disk. For `kiln prune --all`.
    pub fn clear_stat_and_compact(&self) -> Result<()> {
        let mut db = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        tx.delete_table(STAT).map_err(|e| self.err(e))?;
        tx.open_table(STAT).map_err(|e| self.err(e))?;
        tx.delete_table(CONTEXT_LAYERS).map_err(|e| self.err(e))?;
        tx.open_table(CONTEXT_LAYERS).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        // Compaction stops at a page a reader holds; it is retried until it has nothing to do.
        // Another kiln process in a transaction right now refuses it: the stat cache is empty
        // all the same, and the space comes back at the next prune.
        loop {
            match db.compact() {
                Ok(true) => {}
                Ok(false) | Err(redb::CompactionError::TransactionInProgress) => return Ok(()),
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    fn read_record(&self, db: &redb::Database, key: &Digest) -> Result<Option<CacheRecord>> {
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(RESULTS).map_err(|e| self.err(e))?;
        let Some(v) = table
            .get(key.as_bytes().as_slice())
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        let rec: CacheRecord =
            serde_json::from_slice(v.value()).map_err(|source| Error::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        Ok(Some(rec))
    }

    /// Records what `key` produced (durably, before returning).
    pub fn put(&self, key: &Digest, rec: &CacheRecord) -> Result<()> {
        let bytes = serde_json::to_vec(rec).map_err(|source| Error::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        self.with_db(|db| {
            let tx = db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut table = tx.open_table(RESULTS).map_err(|e| self.err(e))?;
                table
                    .insert(key.as_bytes().as_slice(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// Looks up many stat records at once (one read transaction).
    pub fn stat_get_many(&self, keys: &[String]) -> Result<Vec<Option<StatRecord>>> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.err(e))?;
            let table = tx.open_table(STAT).map_err(|e| self.err(e))?;
            keys.iter()
                .map(|k| {
                    let v = table.get(k.as_str()).map_err(|e| self.err(e))?;
                    Ok(v.and_then(|v| StatRecord::decode(v.value())))
                })
                .collect()
        })
    }

    /// Every stat record whose key starts with `prefix`, keyed by the rest of the key: one
    /// range read, in key order, instead of a lookup per file.
    pub fn stat_scan(&self, prefix: &str) -> Result<HashMap<String, StatRecord>> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.err(e))?;
            let table = tx.open_table(STAT).map_err(|e| self.err(e))?;
            let mut out = HashMap::new();
            for entry in table.range(prefix..).map_err(|e| self.err(e))? {
                let (k, v) = entry.map_err(|e| self.err(e))?;
                let Some(rest) = k.value().strip_prefix(prefix) else {
                    break;
                };
                if let Some(r) = StatRecord::decode(v.value()) {
                    out.insert(rest.to_owned(), r);
                }
            }
            Ok(out)
        })
    }

    /// The stat records of `rels` (sorted in byte order, as the walk of a context gives
    /// them), each keyed `prefix` + rel, in the order of `rels`: one range read merged with the
    /// list, where [`CacheIndex::stat_scan`] builds a map of every record (its hashing and
    /// 20,000 key strings were a tenth of a no-op build's CPU). None for a rel without a record,
    /// or with one that does not decode. A list out of order only misses records.
    pub fn stat_match<'a>(
        &self,
        prefix: &str,
        rels: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Option<StatRecord>>> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.err(e))?;
            let table = tx.open_table(STAT).map_err(|e| self.err(e))?;
            let mut range = table.range(prefix..).map_err(|e| self.err(e))?;
            let mut cur = range.next().transpose().map_err(|e| self.err(e))?;
            let mut out = Vec::new();
            for rel in rels {
                let found = loop {
                    let order = match &cur {
                        None => None,
                        Some((k, _)) => k.value().strip_prefix(prefix).map(|rest| rest.cmp(rel)),
                    };
                    match order {
                        // Past the last record of this prefix: no more hits.
                        None => {
                            cur = None;
                            break None;
                        }
                        Some(std::cmp::Ordering::Less) => {
                            cur = range.next().transpose().map_err(|e| self.err(e))?;
                        }
                        Some(std::cmp::Ordering::Equal) => {
                            break cur
                                .as_ref()
                                .and_then(|(_, v)| StatRecord::decode(v.value()));
                        }
                        Some(std::cmp::Ordering::Greater) => break None,
                    }
                };
                out.push(found);
            }
            Ok(out)
        })
    }

    /// Stores many stat records at once (one write transaction).
    pub fn stat_put_many(&self, records: &[(String, StatRecord)]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.with_db(|db| {
            let tx = db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut table = tx.open_table(STAT).map_err(|e| self.err(e))?;
                for (k, r) in records {
                    table
                        .insert(k.as_str(), r.encode().as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }

    /// The last layer materialized from the context `context` (an identifier of its
    /// directory), if one was recorded and decodes.
    pub fn context_layer(&self, context: &str) -> Result<Option<ContextLayer>> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.err(e))?;
            let table = tx.open_table(CONTEXT_LAYERS).map_err(|e| self.err(e))?;
            let v = table.get(context).map_err(|e| self.err(e))?;
            // One that does not decode is only a missed shortcut: everything is copied.
            Ok(v.and_then(|v| ContextLayer::decode(v.value())))
        })
    }

    /// Records `layer` as the last layer materialized from context `context`.
    pub fn put_context_layer(&self, context: &str, layer: &ContextLayer) -> Result<()> {
        let bytes = layer.encode();
        self.with_db(|db| {
            let tx = db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut table = tx.open_table(CONTEXT_LAYERS).map_err(|e| self.err(e))?;
                table
                    .insert(context, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            tx.commit().map_err(|e| self.err(e))
        })
    }
}

/// The first byte of a stat record in kiln's binary form (earlier ones were JSON, which still
/// reads).
const STAT_V1: u8 = 1;
const STAT_LEN: usize = 1 + 8 + 8 + 16 + 16 + 32;

impl StatRecord {
    /// Fixed-size binary: the stat cache of a 20 000-file context is read whole at every
    /// build, so a record costs 81 bytes and no parsing.
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(STAT_LEN);
        b.push(STAT_V1);
        b.extend_from_slice(&self.ino.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.mtime_ns.to_le_bytes());
        b.extend_from_slice(&self.ctime_ns.to_le_bytes());
        b.extend_from_slice(self.hash.as_bytes());
        b
    }

    /// A record that does not decode is only a missed shortcut: the file is hashed again.
    fn decode(b: &[u8]) -> Option<StatRecord> {
        if b.len() != STAT_LEN || b[0] != STAT_V1 {
            return serde_json::from_slice(b).ok();
        }
        let mut r = Reader(&b[1..]);
        Some(StatRecord {
            ino: u64::from_le_bytes(r.array()?),
            size: u64::from_le_bytes(r.array()?),
            mtime_ns: i128::from_le_bytes(r.array()?),
            ctime_ns: i128::from_le_bytes(r.array()?),
            hash: Digest::from_bytes(r.array()?),
        })
    }
}

/// The last layer materialized from a local context: its id and, for each regular file in it,
/// what the file holds there. Files of a new materialization with the same content, mode and
/// mtime are hard links to these (layers never change once committed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextLayer {
    /// The layer.
    pub layer: LayerId,
    /// Its regular files, by path relative to the layer root.
    pub files: Vec<ContextFile>,
}

/// One regular file of a [`ContextLayer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextFile {
    /// Path relative to the layer root.
    pub rel: String,
    /// Content hash.
    pub hash: Digest,
    /// Permission bits.
    pub mode: u32,
    /// mtime in nanoseconds.
    pub mtime_ns: i128,
}

const CONTEXT_V1: u8 = 1;

impl ContextLayer {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.files.len() * 80);
        b.push(CONTEXT_V1);
        put_str(&mut b, &self.layer.0);
        b.extend_from_slice(&(self.files.len() as u64).to_le_bytes());
        for f in &self.files {
            put_str(&mut b, &f.rel);
            b.extend_from_slice(f.hash.as_bytes());
            b.extend_from_slice(&f.mode.to_le_bytes());
            b.extend_from_slice(&f.mtime_ns.to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Option<ContextLayer> {
        let (&version, rest) = b.split_first()?;
        if version != CONTEXT_V1 {
            return None;
        }
        let mut r = Reader(rest);
        let layer = LayerId(r.string()?);
        let n = u64::from_le_bytes(r.array()?);
        // Bounded by what the bytes can hold, not by what they claim.
        let mut files = Vec::with_capacity((n as usize).min(r.0.len() / 60));
        for _ in 0..n {
            files.push(ContextFile {
                rel: r.string()?,
                hash: Digest::from_bytes(r.array()?),
                mode: u32::from_le_bytes(r.array()?),
                mtime_ns: i128::from_le_bytes(r.array()?),
            });
        }
        r.0.is_empty().then_some(ContextLayer { layer, files })
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// Reads the binary records above; `None` at any short or malformed field.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn string(&mut self) -> Option<String> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        if self.0.len() < n {
            return None;
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }
}

fn db_err(path: &str, e: impl Into<redb::Error>) -> Error {
    Error::Db {
        path: path.to_owned(),
        source: Box::new(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_new_index_appears_whole_and_dead_creators_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        // What a creator killed before linking leaves: a half-made file under its own name.
        let leftover = dir.path().join(".cache.redb.999999999.new");
        std::fs::write(&leftover, [0u8; 4096]).unwrap();
        let index = super::CacheIndex::open(&path).unwrap();
        assert!(!leftover.exists(), "a dead creator's temporary stays");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["cache.redb"]);
        drop(index);
        // Opened again: the file made by linking is a whole index.
        super::CacheIndex::open(&path).unwrap();
    }

    /// Run by `creating_an_index_flushes_it_once` in a child process under strace: creates an
    /// index where the parent says, and nothing else.
    #[test]
    #[ignore = "run by creating_an_index_flushes_it_once"]
    fn create_an_index_for_the_flush_count() {
        let path = std::env::var_os("KILN_CACHE_TEST_NEW_INDEX")
            .expect("KILN_CACHE_TEST_NEW_INDEX names the index to create");
        super::CacheIndex::open(std::path::Path::new(&path)).unwrap();
    }

    /// The flush calls (`fsync`, `fdatasync`...) of a child process that opens (creating it if
    /// missing) the index at `path`, as strace saw them.
    fn flushes_of_an_open(path: &std::path::Path, trace: &std::path::Path) -> Vec<String> {
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new("strace")
            .arg("-f")
            .arg("-qq")
            .args(["-e", "trace=fsync,fdatasync,sync_file_range,syncfs,sync"])
            .arg("-o")
            .arg(trace)
            .arg(&exe)
            .args([
                "tests::create_an_index_for_the_flush_count",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env("KILN_CACHE_TEST_NEW_INDEX", path)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("this test needs strace (apt-get install strace)");
        assert!(status.success(), "the traced index open failed");
        std::fs::read_to_string(trace)
            .unwrap()
            .lines()
            .filter(|l| l.contains("sync"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn creating_an_index_flushes_it_once() {
        // A fresh store's index used to cost 9 fdatasync (redb's creation and its first
        // commit) and a fsync more than opening an existing one: the file is private until
        // linked, so one flush of it is enough.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let creating = flushes_of_an_open(&path, &dir.path().join("trace-create"));
        assert!(path.is_file(), "the traced child made no index");
        let opening = flushes_of_an_open(&path, &dir.path().join("trace-open"));
        assert_eq!(
            creating.len(),
            opening.len() + 1,
            "flushes when creating the index:\n{}\nwhen opening it:\n{}",
            creating.join("\n"),
            opening.join("\n")
        );
        // The index made so is whole: records written to it are read back.
        let index = super::CacheIndex::open(&path).unwrap();
        let key = kiln_types::Digest::of(b"key");
        let record = super::CacheRecord {
            snapshot: kiln_snapshot::Snapshot::default(),
            created_unix: 7,
        };
        index.put(&key, &record).unwrap();
        drop(index);
        let index = super::CacheIndex::open(&path).unwrap();
        let listed = index.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((&listed[0].key, &listed[0].record), (&key, &record));
    }

    use super::*;

    #[test]
    fn two_holders_of_one_index_write_at_once() {
        // Two indexes on one file stand for two kiln processes on one store.
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store")).unwrap();
        let file = t.path().join("cache.redb");
        let a = CacheIndex::open(&file).unwrap();
        let b = CacheIndex::open(&file).unwrap();
        let rec = CacheRecord {
            snapshot: Snapshot { layers: vec![] },
            created_unix: 7,
        };
        std::thread::scope(|s| {
            for (i, idx) in [&a, &b].into_iter().enumerate() {
                let rec = rec.clone();
                s.spawn(move || {
                    for n in 0..50u32 {
                        let key = Digest::of(format!("{i}-{n}").as_bytes());
                        idx.put(&key, &rec).unwrap();
                    }
                });
            }
        });
        assert_eq!(
            b.get(&store, &Digest::of(b"0-49")).unwrap(),
            Some(rec.clone())
        );
        assert_eq!(a.get(&store, &Digest::of(b"1-49")).unwrap(), Some(rec));
    }

    #[test]
    fn a_reader_does_not_keep_another_process_out() {
        // `a` reads through a long transaction (GC listing the records) while `b`, another
        // build, records a step: `b` must not wait for `a`. With one process admitted at a time
        // they wait for each other, and the bound below is what ends it.
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store")).unwrap();
        let file = t.path().join("cache.redb");
        let a = std::sync::Arc::new(CacheIndex::open(&file).unwrap());
        let b = std::sync::Arc::new(CacheIndex::open(&file).unwrap());
        let key = Digest::of(b"written by b");
        let rec = CacheRecord {
            snapshot: Snapshot { layers: vec![] },
            created_unix: 9,
        };
        let (done, ended) = std::sync::mpsc::channel();
        {
            let (a, b, key, rec) = (a.clone(), b.clone(), key, rec.clone());
            std::thread::spawn(move || {
                let r = a.with_db(|db| {
                    let before = db.begin_read().map_err(|e| a.err(e))?;
                    b.put(&key, &rec)?;
                    // The transaction begun before reads as it began.
                    let table = before.open_table(RESULTS).map_err(|e| a.err(e))?;
                    Ok(table
                        .get(key.as_bytes().as_slice())
                        .map_err(|e| a.err(e))?
                        .is_none())
                });
                let _ = done.send(r.map_err(|e| e.to_string()));
            });
        }
        let isolated = ended
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a write waited for another holder's read");
        assert_eq!(isolated, Ok(true));
        assert_eq!(a.get(&store, &key).unwrap(), Some(rec));
    }

    #[test]
    fn an_index_held_whole_by_an_older_kiln_is_named_as_such() {
        // Earlier kilns opened the file in redb's exclusive mode.
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("cache.redb");
        let _older = redb::Database::create(&file).unwrap();
        let e = CacheIndex::open(&file).err().unwrap();
        assert!(matches!(e, Error::HeldByOlderKiln { .. }), "{e}");
        assert!(e.to_string().contains("older version"), "{e}");
    }

    #[test]
    fn an_index_from_before_the_usage_table_gains_it() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("cache.redb");
        {
            let db = redb::Database::create(&file).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(RESULTS).unwrap();
            tx.open_table(STAT).unwrap();
            tx.commit().unwrap();
        }
        let idx = CacheIndex::open(&file).unwrap();
        assert_eq!(idx.list().unwrap(), vec![]);
        drop(idx);
        // Reopened with every table there: nothing to create.
        let idx = CacheIndex::open(&file).unwrap();
        assert_eq!(idx.list().unwrap(), vec![]);
    }

    #[test]
    fn records_survive_reopen_and_missing_layers_miss() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store")).unwrap();
        let layer = store.new_layer().unwrap().commit().unwrap();
        let key = Digest::of(b"k");
        let rec = CacheRecord {
            snapshot: Snapshot {
                layers: vec![layer.clone()],
            },
            created_unix: 1,
        };
        {
            let idx = CacheIndex::open(&t.path().join("cache.redb")).unwrap();
            assert_eq!(idx.get(&store, &key).unwrap(), None);
            idx.put(&key, &rec).unwrap();
        }
        let idx = CacheIndex::open(&t.path().join("cache.redb")).unwrap();
        assert_eq!(idx.get(&store, &key).unwrap(), Some(rec));
        std::fs::remove_dir_all(store.layer_dir(&layer)).unwrap();
        assert_eq!(idx.get(&store, &key).unwrap(), None);

        let s = StatRecord {
            ino: 1,
            size: 2,
            mtime_ns: 3,
            ctime_ns: 4,
            hash: Digest::of(b"x"),
        };
        idx.stat_put_many(&[("a".into(), s.clone())]).unwrap();
        assert_eq!(
            idx.stat_get_many(&["a".into(), "b".into()]).unwrap(),
            vec![Some(s), None]
        );
    }

    #[test]
    fn use_is_kept_beside_records_and_records_can_be_removed() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store")).unwrap();
        let idx = CacheIndex::open(&t.path().join("cache.redb")).unwrap();
        let rec = |n| CacheRecord {
            snapshot: Snapshot { layers: vec![] },
            created_unix: n,
        };
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let made = RecordUse {
            last_used_ms: 100_000,
            usage_count: 1,
            description: "RUN make".into(),
            kind: "regular".into(),
        };
        idx.put_used(&a, &rec(100), &made).unwrap();
        // A record written without its use (an older kiln): last used when it was created.
        idx.put(&b, &rec(50)).unwrap();
        idx.get(&store, &a).unwrap().unwrap();
        idx.get(&store, &a).unwrap().unwrap();
        idx.flush_use(200_000).unwrap();
        idx.flush_use(300_000).unwrap(); // nothing found since: nothing changes
        let mut listed = idx.list().unwrap();
        listed.sort_by_key(|l| l.record.created_unix);
        assert_eq!(listed[0].key, b);
        assert_eq!(listed[0].usage.last_used_ms, 50_000);
        assert_eq!(listed[0].usage.usage_count, 0);
        assert_eq!(listed[1].key, a);
        assert_eq!(
            listed[1].usage,
            RecordUse {
                last_used_ms: 200_000,
                usage_count: 2,
                ..made
            }
        );
        idx.remove(&[a]).unwrap();
        assert_eq!(idx.get(&store, &a).unwrap(), None);
        assert_eq!(idx.list().unwrap().len(), 1);
    }

    #[test]
    fn a_context_is_read_whole_by_its_prefix_and_old_records_still_read() {
        let t = tempfile::tempdir().unwrap();
        let idx = CacheIndex::open(&t.path().join("cache.redb")).unwrap();
        let rec = |n: u64| StatRecord {
            ino: n,
            size: n * 10,
            mtime_ns: -(i128::from(n)),
            ctime_ns: i128::from(n) << 70,
            hash: Digest::of(&n.to_le_bytes()),
        };
        idx.stat_put_many(&[
            ("/ctx\0a".into(), rec(1)),
            ("/ctx\0d/b".into(), rec(2)),
            // Neighbours of the prefix in key order: another context, a longer name.
            ("/ctx2\0a".into(), rec(3)),
            ("/ct\0a".into(), rec(4)),
        ])
        .unwrap();
        // A JSON record, as kilns before the binary form wrote them.
        idx.with_db(|db| {
            let tx = db.begin_write().map_err(|e| idx.err(e))?;
            {
                let mut table = tx.open_table(STAT).map_err(|e| idx.err(e))?;
                let json = serde_json::to_vec(&rec(5)).unwrap();
                table
                    .insert("/ctx\0old", json.as_slice())
                    .map_err(|e| idx.err(e))?;
                table
                    .insert("/ctx\0garbage", b"\x01short".as_slice())
                    .map_err(|e| idx.err(e))?;
            }
            tx.commit().map_err(|e| idx.err(e))
        })
        .unwrap();
        // The same records, merged with a sorted list (a rel without a record, one past the
        // last, one before the first; another context's records are not this one's).
        let matched = idx
            .stat_match(
                "/ctx\0",
                ["0", "a", "b", "d/b", "garbage", "old", "zzz"]
                    .iter()
                    .copied(),
            )
            .unwrap();
        assert_eq!(
            matched,
            vec![
                None,
                Some(rec(1)),
                None,
                Some(rec(2)),
                None,
                Some(rec(5)),
                None
            ]
        );
        assert_eq!(
            idx.stat_match("/ctx2\0", ["a"].iter().copied()).unwrap(),
            vec![Some(rec(3))]
        );
        assert_eq!(
            idx.stat_match("/none\0", ["a"].iter().copied()).unwrap(),
            vec![None]
        );
        let all = idx.stat_scan("/ctx\0").unwrap();
        let mut names: Vec<&str> = all.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["a", "d/b", "old"]);
        assert_eq!(all["a"], rec(1));
        assert_eq!(all["d/b"], rec(2));
        assert_eq!(all["old"], rec(5));
        assert_eq!(
            idx.stat_get_many(&["/ctx2\0a".into()]).unwrap(),
            vec![Some(rec(3))]
        );
    }

    #[test]
    fn the_last_context_layer_round_trips_and_prune_all_forgets_it() {
        let t = tempfile::tempdir().unwrap();
        let idx = CacheIndex::open(&t.path().join("cache.redb")).unwrap();
        assert_eq!(idx.context_layer("/ctx").unwrap(), None);
        let layer = ContextLayer {
            layer: LayerId("abc".into()),
            files: vec![
                ContextFile {
                    rel: "d/é.txt".into(),
                    hash: Digest::of(b"x"),
                    mode: 0o4755,
                    mtime_ns: -5,
                },
                ContextFile {
                    rel: "z".into(),
                    hash: Digest::of(b"z"),
                    mode: 0o600,
                    mtime_ns: 1_700_000_000_123_456_789,
                },
            ],
        };
        idx.put_context_layer("/ctx", &layer).unwrap();
        assert_eq!(idx.context_layer("/ctx").unwrap(), Some(layer.clone()));
        assert_eq!(idx.context_layer("/other").unwrap(), None);
        // A truncated record is no record.
        let bytes = layer.encode();
        assert_eq!(ContextLayer::decode(&bytes[..bytes.len() - 1]), None);
        idx.clear_stat_and_compact().unwrap();
        assert_eq!(idx.context_layer("/ctx").unwrap(), None);
    }

    #[test]
    fn clearing_the_stat_cache_gives_the_space_back() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("cache.redb");
        let idx = CacheIndex::open(&file).unwrap();
        let s = StatRecord {
            ino: 1,
            size: 2,
            mtime_ns: 3,
            ctime_ns: 4,
            hash: Digest::of(b"x"),
        };
        let many: Vec<(String, StatRecord)> = (0..20_000)
            .map(|i| (format!("some/context/path/{i:08}"), s.clone()))
            .collect();
        idx.stat_put_many(&many).unwrap();
        let full = std::fs::metadata(&file).unwrap().len();
        idx.clear_stat_and_compact().unwrap();
        let after = std::fs::metadata(&file).unwrap().len();
        assert!(after < full / 2, "{after} of {full}");
        assert_eq!(
            idx.stat_get_many(&["some/context/path/00000001".into()])
                .unwrap(),
            vec![None]
        );
    }
}
