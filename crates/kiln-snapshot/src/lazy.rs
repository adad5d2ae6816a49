//! Layers that exist as a blob only: a layer taken from a blob (an imported cache's, a pulled
//! image's) whose diff id is known is recorded without unpacking it, and its files are written
//! the first time a view needs them. An export of it streams the blob; a build that only
//! exports never pays for the unpack.
//!
//! On disk such a layer is `layers/<id>/` without `fs/`, with `blob-lazy.json` naming its blob
//! (a `LayerBlob`: digest, size, media type, diff id). Being a `blob-*.json` record, GC counts
//! its blob as the layer's, and `verify` drops it with a changed blob, after which the layer
//! is missing and the records naming it are misses. Unpacking writes `fs/` under `tmp/` and
//! renames it into place, so a killed unpack leaves the layer as it was.

use std::fs;
use std::path::PathBuf;

use kiln_types::Digest;

use crate::import::{codec, decoder, extract_tar, Codec, ImportedLayer};
use crate::layer_tar::Compression;
use crate::store::{unique_name, LayerBlob, LayerId, Store};
use crate::{io_err, Error, Result};

/// The record of a blob-only layer, beside where `fs/` goes.
const LAZY_RECORD: &str = "blob-lazy.json";

impl Store {
    /// A layer for blob `blob` (already in the store) whose uncompressed tar is `diff_id`,
    /// without unpacking it: the layer with that diff id when there is one, else a new
    /// blob-only layer (its files are written when a view first needs them, and checked
    /// against `diff_id` then). As with [`Store::import_layer`], a gzip or plain tar blob is
    /// recorded as the layer's exported form.
    pub fn import_layer_lazy(
        &self,
        blob: &Digest,
        media_type: &str,
        diff_id: &Digest,
    ) -> Result<ImportedLayer> {
        let codec = codec(media_type).ok_or_else(|| Error::UnsupportedMediaType {
            blob: *blob,
            media_type: media_type.to_owned(),
        })?;
        if let Some(id) = self.layer_by_diff_id(diff_id)? {
            return Ok(ImportedLayer {
                id,
                diff_id: *diff_id,
                notes: Vec::new(),
            });
        }
        let path = self.blob_path(blob);
        let size = fs::metadata(&path)
            .map_err(io_err("stat layer blob", &path))?
            .len();
        // Made under tmp/ and renamed into place whole, as a layer directory is (and without
        // `fs/`, which appears when the layer is unpacked).
        let lazy = LayerBlob {
            diff_id: *diff_id,
            digest: *blob,
            size,
            media_type: media_type.to_owned(),
        };
        let dir = self.temp_dir("layer")?;
        let made = write_records(&dir, &lazy, codec);
        let id = LayerId(unique_name());
        let dest = self.root().join("layers").join(&id.0);
        let made = made.and_then(|()| fs::rename(&dir, &dest).map_err(io_err("rename", &dest)));
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.index_put("by-diff-id", diff_id, &id.0)?;
        self.index_put("by-blob", blob, &diff_id.hex())?;
        Ok(ImportedLayer {
            id,
            diff_id: *diff_id,
            notes: Vec::new(),
        })
    }

    /// Whether layer `id`'s files are on disk (false for a blob-only layer).
    pub fn is_unpacked(&self, id: &LayerId) -> bool {
        self.layer_dir(id).is_dir()
    }

    /// The blob of a blob-only layer, if `id` is one and its record reads.
    pub(crate) fn lazy_blob(&self, id: &LayerId) -> Option<LayerBlob> {
        let bytes = fs::read(self.lazy_record_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn lazy_record_path(&self, id: &LayerId) -> PathBuf {
        self.root().join("layers").join(&id.0).join(LAZY_RECORD)
    }

    /// Writes the files of every blob-only layer of `layers`.
    pub fn unpack_layers(&self, layers: &[LayerId]) -> Result<()> {
        layers.iter().try_for_each(|l| self.unpack_layer(l))
    }

    /// Writes the files of layer `id` if it exists as a blob only: the blob is read checked
    /// against its digest and must unpack to the recorded diff id. One that does not is
    /// forgotten (the layer is then missing, and the cache records naming it are misses).
    pub fn unpack_layer(&self, id: &LayerId) -> Result<()> {
        let dest = self.layer_dir(id);
        if dest.is_dir() {
            return Ok(());
        }
        let record_path = self.lazy_record_path(id);
        let Some(lazy) = self.lazy_blob(id) else {
            return Err(Error::Corrupt {
                path: record_path,
                why: "the layer has neither files nor a readable blob record".to_owned(),
            });
        };
        let codec = codec(&lazy.media_type).ok_or_else(|| Error::UnsupportedMediaType {
            blob: lazy.digest,
            media_type: lazy.media_type.clone(),
        })?;
        let tmp = self.temp_dir("unpack")?;
        let result = (|| {
            let root = tmp.join("fs");
            fs::create_dir(&root).map_err(io_err("create", &root))?;
            let blob_path = self.blob_path(&lazy.digest);
            let stream = decoder(codec, self.open_blob_verified(&lazy.digest)?, &blob_path)?;
            let (diff_id, _notes) = extract_tar(stream, &lazy.digest, &root)?;
            if diff_id != lazy.diff_id {
                let _ = fs::remove_file(&record_path);
                return Err(Error::Corrupt {
                    path: blob_path,
                    why: format!(
                        "layer blob {} unpacks to {diff_id}, but it was taken as {}",
                        lazy.digest, lazy.diff_id
                    ),
                });
            }
            match fs::rename(&root, &dest) {
                Ok(()) => Ok(()),
                // Another build unpacked it meanwhile: the same files.
                Err(_) if dest.is_dir() => Ok(()),
                Err(e) => Err(io_err("rename", &dest)(e)),
            }
        })();
        // Best effort, as for layers: a leftover under tmp/ is swept with its session.
        let _ = fs::remove_dir_all(&tmp);
        result
    }
}

/// Writes the records of a blob-only layer into its directory `dir`: its blob, and, for gzip
/// and plain tar blobs, the same blob as the layer's exported form.
fn write_records(dir: &std::path::Path, lazy: &LayerBlob, codec: Codec) -> Result<()> {
    let record = |name: &str, blob: &LayerBlob| {
        let p = dir.join(name);
        let json = serde_json::to_vec(blob).map_err(|e| Error::Corrupt {
            path: p.clone(),
            why: e.to_string(),
        })?;
        fs::write(&p, json).map_err(io_err("write", &p))
    };
    record(LAZY_RECORD, lazy)?;
    let exported = match codec {
        Codec::Tar => Some(Compression::Uncompressed),
        Codec::Gzip => Some(Compression::Gzip),
        Codec::Zstd => None,
    };
    if let Some(c) = exported {
        let form = LayerBlob {
            media_type: c.media_type().to_owned(),
            ..lazy.clone()
        };
        record(&format!("blob-{}.json", c.name()), &form)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ReadView, Snapshot, WriteView};

    fn tar_gz(files: &[(&str, &[u8])]) -> (Vec<u8>, Digest) {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append_data(&mut h, name, *data).expect("append");
        }
        let tar = b.into_inner().expect("tar");
        let diff_id = Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).expect("gzip");
        (gz.finish().expect("gzip"), diff_id)
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_with(dir.path(), crate::SnapshotterKind::Copy).expect("store");
        (dir, store)
    }

    /// A gzip layer of `files` written as a blob and imported lazily: (blob, diff id, layer).
    fn lazy_layer(store: &Store, files: &[(&str, &[u8])]) -> (Digest, Digest, ImportedLayer) {
        let (gz, diff_id) = tar_gz(files);
        let blob = store.write_blob(&gz).expect("blob");
        let l = store
            .import_layer_lazy(&blob, kiln_types::image::MEDIA_TYPE_LAYER_GZIP, &diff_id)
            .expect("lazy import");
        (blob, diff_id, l)
    }

    #[test]
    fn a_lazy_layer_exports_its_blob_and_unpacks_when_a_view_needs_it() {
        let (_d, store) = store();
        let (blob, diff_id, l) = lazy_layer(&store, &[("hello", b"world")]);
        assert!(store.has_layer(&l.id), "a blob-only layer is a layer");
        assert!(!store.is_unpacked(&l.id), "nothing is unpacked on import");
        assert_eq!(
            store.layer_by_diff_id(&diff_id).expect("index"),
            Some(l.id.clone())
        );
        // The export takes the blob as it is: still nothing unpacked.
        let exported = store.layer_blob(&l.id, Compression::Gzip).expect("blob");
        assert_eq!((exported.digest, exported.diff_id), (blob, diff_id));
        assert!(!store.is_unpacked(&l.id));
        // A step reading it gets its files.
        let snap = Snapshot {
            layers: vec![l.id.clone()],
        };
        let view = ReadView::new(&store, &snap).expect("view");
        assert_eq!(fs::read(view.path().join("hello")).expect("file"), b"world");
        drop(view);
        assert!(store.is_unpacked(&l.id));
        // Importing the same content again finds the layer.
        let again = store
            .import_layer(&blob, kiln_types::image::MEDIA_TYPE_LAYER_GZIP)
            .expect("import");
        assert_eq!(again.id, l.id);
    }

    #[test]
    fn a_write_view_and_an_uncompressed_export_unpack_first() {
        let (_d, store) = store();
        let (_, _, l) = lazy_layer(&store, &[("a", b"1")]);
        let tar = store
            .layer_blob(&l.id, Compression::Uncompressed)
            .expect("tar form");
        // Made by kiln's own tar writer from the files, which the layer now has.
        assert_eq!(tar.digest, tar.diff_id);
        assert!(store.is_unpacked(&l.id));
        let (gz2, diff2) = tar_gz(&[("b", b"2")]);
        let blob2 = store.write_blob(&gz2).expect("blob");
        let l2 = store
            .import_layer_lazy(&blob2, kiln_types::image::MEDIA_TYPE_LAYER_GZIP, &diff2)
            .expect("lazy import");
        let w = WriteView::new(
            &store,
            &Snapshot {
                layers: vec![l.id.clone(), l2.id.clone()],
            },
        )
        .expect("write view");
        assert_eq!(fs::read(w.path().join("a")).expect("a"), b"1");
        assert_eq!(fs::read(w.path().join("b")).expect("b"), b"2");
    }

    #[test]
    fn a_blob_that_lies_about_its_diff_id_is_forgotten_when_unpacked() {
        let (_d, store) = store();
        let (gz, _) = tar_gz(&[("x", b"y")]);
        let blob = store.write_blob(&gz).expect("blob");
        let claimed = Digest::of(b"another tar");
        let l = store
            .import_layer_lazy(&blob, kiln_types::image::MEDIA_TYPE_LAYER_GZIP, &claimed)
            .expect("lazy import");
        let err = store.unpack_layer(&l.id).expect_err("wrong diff id");
        assert!(err.to_string().contains("unpacks to"), "{err}");
        assert!(!store.has_layer(&l.id), "the layer is missing now");
        assert!(!store.is_unpacked(&l.id));
    }

    #[test]
    fn a_lazy_layer_without_its_blob_is_missing() {
        let (_d, store) = store();
        let (blob, diff_id, l) = lazy_layer(&store, &[("x", b"y")]);
        fs::remove_file(store.blob_path(&blob)).expect("remove blob");
        assert!(!store.has_layer(&l.id));
        assert_eq!(store.layer_by_diff_id(&diff_id).expect("index"), None);
    }

    #[test]
    fn a_changed_blob_is_refused_when_unpacking() {
        let (_d, store) = store();
        let (blob, _, l) = lazy_layer(&store, &[("x", b"y")]);
        let (other, _) = tar_gz(&[("x", b"z")]);
        fs::write(store.blob_path(&blob), other).expect("tamper");
        assert!(
            store.unpack_layer(&l.id).is_err(),
            "a changed blob is not unpacked"
        );
        assert!(!store.is_unpacked(&l.id));
    }
}
