//! The cache index: which snapshot a cache key produced, and the stat cache that lets an
//! unchanged local context cost one `stat` per file instead of a full read.
//!
//! Architecture invariant: records only; it never runs ops. Crash safety comes from redb's
//! transactions plus an ordering rule the engine follows: a layer is committed to the store
//! before the record that names it, so a visible record never points at a missing layer. A
//! record whose layers vanished anyway (manual deletion) reads as a miss.

use std::path::Path;

use kiln_snapshot::{Snapshot, Store};
use kiln_types::Digest;
use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

const RESULTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("results");
const STAT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("stat");

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

/// The index, one redb file.
pub struct CacheIndex {
    db: redb::Database,
    path: String,
}

impl CacheIndex {
    /// Opens or creates the index at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let p = path.display().to_string();
        let db = redb::Database::create(path).map_err(|e| db_err(&p, e))?;
        let index = CacheIndex { db, path: p };
        // Create the tables up front so read transactions never see them missing.
        let tx = index.db.begin_write().map_err(|e| index.err(e))?;
        tx.open_table(RESULTS).map_err(|e| index.err(e))?;
        tx.open_table(STAT).map_err(|e| index.err(e))?;
        tx.commit().map_err(|e| index.err(e))?;
        Ok(index)
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        db_err(&self.path, e)
    }

    /// The record for `key`, if present and all its layers still exist in `store`.
    pub fn get(&self, store: &Store, key: &Digest) -> Result<Option<CacheRecord>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
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
        Ok(rec
            .snapshot
            .layers
            .iter()
            .all(|l| store.has_layer(l))
            .then_some(rec))
    }

    /// Records what `key` produced (durably, before returning).
    pub fn put(&self, key: &Digest, rec: &CacheRecord) -> Result<()> {
        let bytes = serde_json::to_vec(rec).map_err(|source| Error::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = tx.open_table(RESULTS).map_err(|e| self.err(e))?;
            table
                .insert(key.as_bytes().as_slice(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Looks up many stat records at once (one read transaction).
    pub fn stat_get_many(&self, keys: &[String]) -> Result<Vec<Option<StatRecord>>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(STAT).map_err(|e| self.err(e))?;
        keys.iter()
            .map(|k| {
                let v = table.get(k.as_str()).map_err(|e| self.err(e))?;
                // A stat record that does not decode is only a missed shortcut: rehash.
                Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok()))
            })
            .collect()
    }

    /// Stores many stat records at once (one write transaction).
    pub fn stat_put_many(&self, records: &[(String, StatRecord)]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = tx.open_table(STAT).map_err(|e| self.err(e))?;
            for (k, r) in records {
                let bytes = serde_json::to_vec(r).map_err(|source| Error::Corrupt {
                    path: self.path.clone(),
                    source,
                })?;
                table
                    .insert(k.as_str(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
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
    use super::*;

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
}
