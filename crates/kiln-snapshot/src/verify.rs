//! Integrity of the store: every blob is named by the sha256 of its bytes, and a blob changed on
//! disk behind kiln's back (a bad disk, a stray editor, a test flipping a byte) must be found
//! and never shipped. This module gives the three pieces the rest of kiln needs:
//!
//! - [`VerifyingReader`]: a blob read for export or push, hashed as it streams; the read that
//!   reaches the end of a blob whose bytes do not match fails instead of ending, so a tarball
//!   or an upload built from it is never completed.
//! - [`Store::verify`]: the whole store checked (`kiln verify`): every blob's digest and size,
//!   and every layer's recorded exported forms. Streamed, one buffer at a time: a huge store
//!   costs time, never memory.
//! - [`Store::drop_blob`]: a bad blob removed with what was derived from it (the layers'
//!   records of it as their exported form, the import index entry), so that the next use
//!   rebuilds it from the layer directory or fetches it again.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;

use kiln_types::{Digest, Sha256Writer};

use crate::store::{LayerBlob, LayerId, Store};
use crate::{io_err, Error, Result};

/// Bytes read at a time when a blob is hashed.
const CHUNK: usize = 1 << 20;

/// A blob whose bytes no longer hash to its name: the error a [`VerifyingReader`] ends with
/// (inside an [`io::Error`] of kind `InvalidData`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "blob {digest} in the store has changed on disk: its {size} bytes hash to {actual} \
     (`kiln verify --repair` removes it; the next build rebuilds or fetches it again)"
)]
pub struct BlobMismatch {
    /// The blob's name.
    pub digest: Digest,
    /// What its bytes hash to.
    pub actual: Digest,
    /// How many bytes it has.
    pub size: u64,
}

/// Reads a blob of the store and checks it against its digest while it streams: reaching the
/// end of a blob whose bytes do not match is an `InvalidData` error carrying a
/// [`BlobMismatch`], so a writer copying it to its end fails before it completes.
pub struct VerifyingReader<R> {
    inner: R,
    digest: Digest,
    hash: Sha256Writer,
    mismatch: Option<BlobMismatch>,
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner`, the bytes of blob `digest`.
    pub fn new(inner: R, digest: Digest) -> Self {
        VerifyingReader {
            inner,
            digest,
            hash: Sha256Writer::default(),
            mismatch: None,
        }
    }

    /// The mismatch found at the end of the blob, if the end was reached and the bytes were
    /// not the blob's. Lets a caller whose copy failed tell a changed blob from other errors.
    pub fn mismatch(&self) -> Option<&BlobMismatch> {
        self.mismatch.as_ref()
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(m) = &self.mismatch {
            return Err(io::Error::new(io::ErrorKind::InvalidData, m.clone()));
        }
        let n = self.inner.read(buf)?;
        if n > 0 || buf.is_empty() {
            self.hash.update(&buf[..n]);
            return Ok(n);
        }
        let actual = self.hash.clone().finish();
        if actual == self.digest {
            return Ok(0);
        }
        let m = BlobMismatch {
            digest: self.digest,
            actual,
            size: self.hash.len(),
        };
        self.mismatch = Some(m.clone());
        Err(io::Error::new(io::ErrorKind::InvalidData, m))
    }
}

/// The [`BlobMismatch`] an I/O error carries, if it is one (from a [`VerifyingReader`]).
pub fn blob_mismatch(e: &io::Error) -> Option<&BlobMismatch> {
    e.get_ref().and_then(|inner| inner.downcast_ref())
}

/// A blob as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobState {
    /// Its bytes hash to its name.
    Good {
        /// Its size.
        size: u64,
    },
    /// It is not in the store.
    Missing,
    /// Its bytes hash to something else.
    Changed(BlobMismatch),
}

/// What is wrong with one blob or one layer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The blob's bytes do not hash to its name.
    Changed {
        /// What they hash to.
        actual: Digest,
        /// Its size.
        size: u64,
    },
    /// A layer records the blob as its exported form with another size than the blob has.
    WrongSize {
        /// The size the layer's record gives.
        recorded: u64,
        /// The blob's size.
        actual: u64,
    },
    /// A file under `blobs/sha256` that cannot be read or is not named by a digest.
    Unreadable {
        /// Why.
        why: String,
    },
    /// A layer's record of an exported form that cannot be parsed.
    BadRecord {
        /// The record.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// One problem of the store, named by the blob's digest when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The blob concerned.
    pub digest: Option<Digest>,
    /// What is wrong.
    pub kind: ProblemKind,
    /// The layers that record the blob as one of their exported forms.
    pub layers: Vec<LayerId>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.digest {
            Some(d) => write!(f, "{d}: ")?,
            None => write!(f, "store: ")?,
        }
        match &self.kind {
            ProblemKind::Changed { actual, size } => {
                write!(f, "changed on disk: its {size} bytes hash to {actual}")
            }
            ProblemKind::WrongSize { recorded, actual } => write!(
                f,
                "a layer records it with {recorded} bytes, the blob has {actual}"
            ),
            ProblemKind::Unreadable { why } => write!(f, "cannot be checked: {why}"),
            ProblemKind::BadRecord { path, why } => {
                write!(f, "unreadable layer record {}: {why}", path.display())
            }
        }
    }
}

/// What [`Store::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs checked.
    pub blobs: u64,
    /// Their bytes, all read.
    pub bytes: u64,
    /// Layers whose records were checked.
    pub layers: u64,
    /// What is wrong, blobs in digest order.
    pub problems: Vec<Problem>,
}

/// What [`Store::drop_blob`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Whether the blob file was there.
    pub blob: bool,
    /// The layers whose record of it as an exported form was removed.
    pub layers: Vec<LayerId>,
}

impl Store {
    /// Opens blob `digest` for a read that checks it against its digest as it streams.
    pub fn open_blob_verified(&self, digest: &Digest) -> Result<VerifyingReader<fs::File>> {
        let path = self.blob_path(digest);
        let file = fs::File::open(&path).map_err(io_err("open blob", &path))?;
        Ok(VerifyingReader::new(file, *digest))
    }

    /// Reads blob `digest` whole (configs and manifests: small), checked against its digest.
    pub fn read_blob_verified(&self, digest: &Digest) -> Result<Vec<u8>> {
        let bytes = self.read_blob(digest)?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(Error::BlobChanged(BlobMismatch {
                digest: *digest,
                actual,
                size: bytes.len() as u64,
            }));
        }
        Ok(bytes)
    }

    /// Hashes blob `digest` on disk, streamed.
    pub fn check_blob(&self, digest: &Digest) -> Result<BlobState> {
        let path = self.blob_path(digest);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BlobState::Missing),
            Err(e) => return Err(io_err("open blob", &path)(e)),
        };
        let mut reader = VerifyingReader::new(file, *digest);
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => {
                    return Ok(BlobState::Good {
                        size: reader.hash.len(),
                    })
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return match reader.mismatch() {
                        Some(m) => Ok(BlobState::Changed(m.clone())),
                        None => Err(io_err("read blob", &path)(e)),
                    }
                }
            }
        }
    }

    /// Every layer's recorded exported forms: layer → (record path, record). Records that do
    /// not parse are returned apart.
    fn layer_records(&self) -> Result<LayerRecords> {
        let mut out = LayerRecords::default();
        let layers = self.root().join("layers");
        for entry in fs::read_dir(&layers).map_err(io_err("read directory", &layers))? {
            let entry = entry.map_err(io_err("read directory", &layers))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let id = LayerId(name);
            if matches!(id.0.as_str(), "by-diff-id" | "by-blob") || !self.has_layer(&id) {
                continue;
            }
            out.layers += 1;
            let dir = entry.path();
            for e in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
                let e = e.map_err(io_err("read directory", &dir))?;
                let n = e.file_name();
                let n = n.to_string_lossy();
                if !(n.starts_with("blob-") && n.ends_with(".json")) {
                    continue;
                }
                let path = e.path();
                match fs::read(&path).map_err(|e| e.to_string()).and_then(|b| {
                    serde_json::from_slice::<LayerBlob>(&b).map_err(|e| e.to_string())
                }) {
                    Ok(blob) => out.records.push((id.clone(), path, blob)),
                    Err(why) => out.bad.push((id.clone(), path, why)),
                }
            }
        }
        Ok(out)
    }

    /// Checks the whole store: every blob against its digest (streamed), and every layer's
    /// recorded exported forms (the record parses; its blob, when present, has the size it
    /// records). A record whose blob is absent is no problem: the next export recomputes it.
    /// `progress` is called after each blob with (blobs done, bytes done).
    pub fn verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
        let records = self.layer_records()?;
        let mut users: BTreeMap<Digest, Vec<LayerId>> = BTreeMap::new();
        for (id, _, blob) in &records.records {
            let v = users.entry(blob.digest).or_default();
            if !v.contains(id) {
                v.push(id.clone());
            }
        }
        let users_of = |d: &Digest| users.get(d).cloned().unwrap_or_default();
        let mut report = VerifyReport {
            layers: records.layers,
            ..VerifyReport::default()
        };
        let mut sizes: BTreeMap<Digest, u64> = BTreeMap::new();
        let dir = self.root().join("blobs/sha256");
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err("read directory", &dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io_err("read directory", &dir))?;
        names.sort();
        for name in names {
            let shown = name.to_string_lossy().into_owned();
            let Some(digest) = name.to_str().and_then(|h| Digest::from_hex(h).ok()) else {
                report.problems.push(Problem {
                    digest: None,
                    kind: ProblemKind::Unreadable {
                        why: format!(
                            "{} is not named by a sha256 digest",
                            dir.join(&shown).display()
                        ),
                    },
                    layers: Vec::new(),
                });
                continue;
            };
            let state = match self.check_blob(&digest) {
                Ok(s) => s,
                Err(e) => {
                    report.problems.push(Problem {
                        digest: Some(digest),
                        kind: ProblemKind::Unreadable { why: e.to_string() },
                        layers: users_of(&digest),
                    });
                    continue;
                }
            };
            report.blobs += 1;
            match state {
                // Removed meanwhile (a collector): nothing to check.
                BlobState::Missing => {}
                BlobState::Good { size } => {
                    report.bytes += size;
                    sizes.insert(digest, size);
                }
                BlobState::Changed(m) => {
                    report.bytes += m.size;
                    report.problems.push(Problem {
                        digest: Some(digest),
                        kind: ProblemKind::Changed {
                            actual: m.actual,
                            size: m.size,
                        },
                        layers: users_of(&digest),
                    });
                }
            }
            progress(report.blobs, report.bytes);
        }
        for (_, _, blob) in &records.records {
            if let Some(&actual) = sizes.get(&blob.digest) {
                let already = report
                    .problems
                    .iter()
                    .any(|p| p.digest == Some(blob.digest));
                if actual != blob.size && !already {
                    report.problems.push(Problem {
                        digest: Some(blob.digest),
                        kind: ProblemKind::WrongSize {
                            recorded: blob.size,
                            actual,
                        },
                        layers: users_of(&blob.digest),
                    });
                }
            }
        }
        for (id, path, why) in records.bad {
            report.problems.push(Problem {
                digest: None,
                kind: ProblemKind::BadRecord { path, why },
                layers: vec![id],
            });
        }
        Ok(report)
    }

    /// Removes blob `digest` and what was derived from it: every layer's record of it as an
    /// exported form (the next export computes the layer's blob again from its directory) and
    /// its import index entry (a later pull of it unpacks it again, and records the fetched
    /// blob as the layer's form). The layers themselves stay: their files are not the blob.
    pub fn drop_blob(&self, digest: &Digest) -> Result<Dropped> {
        let mut dropped = Dropped::default();
        for (id, path, blob) in self.layer_records()?.records {
            if blob.digest == *digest {
                remove_if_present(&path)?;
                if !dropped.layers.contains(&id) {
                    dropped.layers.push(id);
                }
            }
        }
        remove_if_present(&self.root().join("layers/by-blob").join(digest.hex()))?;
        dropped.blob = remove_if_present(&self.blob_path(digest))?;
        Ok(dropped)
    }

    /// Removes a layer record that cannot be parsed (see [`ProblemKind::BadRecord`]): the
    /// next export computes the layer's blob again.
    pub fn drop_layer_record(&self, path: &std::path::Path) -> Result<bool> {
        let layers = self.root().join("layers");
        if !path.starts_with(&layers) {
            return Ok(false);
        }
        remove_if_present(path)
    }
}

#[derive(Default)]
struct LayerRecords {
    layers: u64,
    records: Vec<(LayerId, PathBuf, LayerBlob)>,
    bad: Vec<(LayerId, PathBuf, String)>,
}

fn remove_if_present(path: &std::path::Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Compression, SnapshotterKind};
    use std::io::Write;

    fn flip_byte(path: &std::path::Path, at: u64) {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x01;
        f.write_all_at(&b, at).unwrap();
    }

    fn store_with_layer(t: &tempfile::TempDir) -> (Store, LayerId, LayerBlob) {
        let store = Store::open_with(t.path().join("s"), SnapshotterKind::Copy).unwrap();
        let b = store.new_layer().unwrap();
        fs::write(b.fs_dir().join("f"), vec![7u8; 100_000]).unwrap();
        let id = b.commit().unwrap();
        let blob = store.layer_blob(&id, Compression::Gzip).unwrap();
        (store, id, blob)
    }

    #[test]
    fn a_verifying_reader_fails_at_the_end_of_a_changed_blob() {
        let t = tempfile::tempdir().unwrap();
        let (store, _, blob) = store_with_layer(&t);
        let mut good = Vec::new();
        store
            .open_blob_verified(&blob.digest)
            .unwrap()
            .read_to_end(&mut good)
            .unwrap();
        assert_eq!(good.len() as u64, blob.size);

        flip_byte(&store.blob_path(&blob.digest), blob.size / 2);
        let mut r = store.open_blob_verified(&blob.digest).unwrap();
        let mut sink = Vec::new();
        let err = r.read_to_end(&mut sink).unwrap_err();
        let m = blob_mismatch(&err).expect("a mismatch error");
        assert_eq!(m.digest, blob.digest);
        assert_ne!(m.actual, blob.digest);
        assert_eq!(r.mismatch(), Some(m));
        assert!(err.to_string().contains(&blob.digest.to_string()), "{err}");
        // A writer that copies it gets the error too, never a clean end.
        let mut r = store.open_blob_verified(&blob.digest).unwrap();
        assert!(io::copy(&mut r, &mut io::sink()).is_err());
        assert!(io::copy(&mut r, &mut io::sink()).is_err(), "stays failed");
    }

    #[test]
    fn verify_names_a_changed_blob_and_the_layer_recording_it_then_drop_rebuilds_it() {
        let t = tempfile::tempdir().unwrap();
        let (store, id, blob) = store_with_layer(&t);
        let config = store.write_blob(b"{\"a\":1}").unwrap();
        let clean = store.verify(|_, _| {}).unwrap();
        assert_eq!(clean.problems, vec![]);
        assert_eq!(clean.blobs, 2);
        assert_eq!(clean.layers, 1);
        assert_eq!(clean.bytes, blob.size + 7);

        flip_byte(&store.blob_path(&blob.digest), 20);
        let report = store.verify(|_, _| {}).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let p = &report.problems[0];
        assert_eq!(p.digest, Some(blob.digest));
        assert_eq!(p.layers, vec![id.clone()]);
        assert!(matches!(p.kind, ProblemKind::Changed { size, .. } if size == blob.size));
        assert!(p.to_string().contains(&blob.digest.to_string()));
        assert!(matches!(
            store.check_blob(&blob.digest).unwrap(),
            BlobState::Changed(_)
        ));
        assert_eq!(
            store.check_blob(&config).unwrap(),
            BlobState::Good { size: 7 }
        );

        let dropped = store.drop_blob(&blob.digest).unwrap();
        assert!(dropped.blob);
        assert_eq!(dropped.layers, vec![id.clone()]);
        assert!(!store.has_blob(&blob.digest));
        // The layer is computed again from its directory: the same bytes as before.
        let again = store.layer_blob(&id, Compression::Gzip).unwrap();
        assert_eq!(again, blob);
        assert_eq!(store.verify(|_, _| {}).unwrap().problems, vec![]);
    }

    #[test]
    fn verify_reports_a_record_with_the_wrong_size_and_a_stray_file() {
        let t = tempfile::tempdir().unwrap();
        let (store, id, blob) = store_with_layer(&t);
        let meta = t.path().join("s/layers").join(&id.0).join("blob-gzip.json");
        let mut wrong = blob.clone();
        wrong.size += 1;
        fs::write(&meta, serde_json::to_vec(&wrong).unwrap()).unwrap();
        let mut f = fs::File::create(t.path().join("s/blobs/sha256/not-a-digest")).unwrap();
        f.write_all(b"x").unwrap();
        let report = store.verify(|_, _| {}).unwrap();
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        assert!(report.problems.iter().any(|p| p.digest == Some(blob.digest)
            && matches!(p.kind, ProblemKind::WrongSize { recorded, actual }
                if recorded == blob.size + 1 && actual == blob.size)));
        assert!(report
            .problems
            .iter()
            .any(|p| p.digest.is_none() && matches!(p.kind, ProblemKind::Unreadable { .. })));
    }

    #[test]
    fn a_pulled_blob_rebuilt_from_its_layer_comes_back_with_the_next_pull() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_with(t.path().join("s"), SnapshotterKind::Copy).unwrap();
        // A layer as a registry sends it: a tar from another writer than kiln's, gzipped.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_mtime(1);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, "hello.txt", &b"hello"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
        gz.write_all(&tar).unwrap();
        let pulled = gz.finish().unwrap();
        let media = kiln_types::image::MEDIA_TYPE_LAYER_GZIP;
        let digest = store.write_blob(&pulled).unwrap();
        let layer = store.import_layer(&digest, media).unwrap();
        assert_eq!(
            store
                .layer_blob(&layer.id, Compression::Gzip)
                .unwrap()
                .digest,
            digest
        );

        // Changed on disk, dropped, rebuilt from the layer's files: another tar.
        flip_byte(&store.blob_path(&digest), 12);
        store.drop_blob(&digest).unwrap();
        let rebuilt = store.layer_blob(&layer.id, Compression::Gzip).unwrap();
        assert_ne!(rebuilt.digest, digest);
        assert_ne!(rebuilt.diff_id, layer.diff_id);

        // Pulled again: the same layer, and the registry's blob is its form again.
        assert_eq!(store.write_blob(&pulled).unwrap(), digest);
        let again = store.import_layer(&digest, media).unwrap();
        assert_eq!(again.id, layer.id);
        assert_eq!(
            store
                .layer_blob(&layer.id, Compression::Gzip)
                .unwrap()
                .digest,
            digest
        );
    }

    #[test]
    fn a_changed_config_blob_is_refused_when_read_verified() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_with(t.path().join("s"), SnapshotterKind::Copy).unwrap();
        let d = store.write_blob(b"{\"config\":true}").unwrap();
        assert!(store.read_blob_verified(&d).is_ok());
        flip_byte(&store.blob_path(&d), 3);
        let err = store.read_blob_verified(&d).unwrap_err();
        assert!(
            matches!(&err, Error::BlobChanged(m) if m.digest == d),
            "{err}"
        );
    }
}
