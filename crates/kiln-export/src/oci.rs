use std::fs;
use std::io::Write;
use std::path::Path;

use kiln_snapshot::Store;
use kiln_types::image::{Index, ANNOTATION_REF_NAME, MEDIA_TYPE_INDEX};
use kiln_types::reference::{Reference, DEFAULT_TAG};
use kiln_types::Digest;

use crate::{io_err, Image, Result};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// containerd's annotation with the full image name; BuildKit writes it too.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// Writes `image` as an OCI image layout: a tarball at `dest`, or a directory when `as_tar` is
/// false. `names` (from `-t`) become the index annotations; the ref name is the tag
/// (`latest` when none), so `umoci unpack --image DIR:latest` and `skopeo` find it.
pub fn export_oci(
    store: &Store,
    image: &Image,
    names: &[String],
    dest: &Path,
    as_tar: bool,
) -> Result<()> {
    let mut desc = image.manifest.clone();
    desc.platform = Some(image.config.platform());
    let (full, tag) = match names.first() {
        Some(n) => (Some(n.clone()), tag_of(n)?),
        None => (None, DEFAULT_TAG.to_owned()),
    };
    if let Some(full) = full {
        desc.annotations
            .insert(ANNOTATION_IMAGE_NAME.to_owned(), full);
    }
    desc.annotations.insert(ANNOTATION_REF_NAME.to_owned(), tag);
    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_INDEX.to_owned()),
        manifests: vec![desc],
        annotations: Default::default(),
    };
    let index_bytes = serde_json::to_vec(&index).expect("index always serializes");
    let mut blobs = image.blobs();
    blobs.sort();
    blobs.dedup();

    if as_tar {
        write_tar(store, &blobs, &index_bytes, dest)
    } else {
        write_dir(store, &blobs, &index_bytes, dest)
    }
}

/// The tag of image name `name`, `latest` when it has none.
fn tag_of(name: &str) -> Result<String> {
    let r = Reference::parse_normalized(name)?;
    Ok(r.tag.unwrap_or_else(|| DEFAULT_TAG.to_owned()))
}

fn write_dir(store: &Store, blobs: &[Digest], index: &[u8], dest: &Path) -> Result<()> {
    let blob_dir = dest.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).map_err(io_err(&blob_dir))?;
    for d in blobs {
        let to = blob_dir.join(d.hex());
        if to.exists() {
            continue;
        }
        // A blob changed on disk is never exported: it is read through once, hashed.
        if let kiln_snapshot::verify::BlobState::Changed(m) = store.check_blob(d)? {
            return Err(kiln_snapshot::Error::BlobChanged(m).into());
        }
        let from = store.blob_path(d);
        // Blobs are immutable: a hard link is a free copy when on the same filesystem.
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).map_err(io_err(&to))?;
        }
    }
    let layout = dest.join("oci-layout");
    fs::write(&layout, OCI_LAYOUT).map_err(io_err(&layout))?;
    let idx = dest.join("index.json");
    fs::write(&idx, index).map_err(io_err(&idx))?;
    Ok(())
}

fn write_tar(store: &Store, blobs: &[Digest], index: &[u8], dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    // Write beside the destination and rename, so a failed export leaves no truncated tarball.
    let tmp = dest.with_extension("kiln-tmp");
    let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    let entry = |b: &mut tar::Builder<_>, path: &str, size: u64, data: &mut dyn std::io::Read| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(0);
        b.append_data(&mut h, path, data)
    };
    let dir = |b: &mut tar::Builder<std::io::BufWriter<fs::File>>, path: &str| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, std::io::empty())
    };
    let mut changed = None;
    let res = (|| -> std::io::Result<()> {
        dir(&mut b, "blobs/")?;
        dir(&mut b, "blobs/sha256/")?;
        for d in blobs {
            let p = store.blob_path(d);
            let f = fs::File::open(&p)?;
            let size = f.metadata()?.len();
            // Hashed as it streams: a blob changed on disk fails the copy at its end, and the
            // half-written tarball is removed below.
            let mut data = kiln_snapshot::verify::VerifyingReader::new(f, *d);
            let written = entry(
                &mut b,
                &format!("blobs/sha256/{}", d.hex()),
                size,
                &mut data,
            );
            changed = data.mismatch().cloned();
            written?;
        }
        entry(&mut b, "index.json", index.len() as u64, &mut &index[..])?;
        entry(
            &mut b,
            "oci-layout",
            OCI_LAYOUT.len() as u64,
            &mut &OCI_LAYOUT[..],
        )?;
        let mut w = b.into_inner()?;
        w.flush()?;
        w.get_ref().sync_all()
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(match changed {
            Some(m) => kiln_snapshot::Error::BlobChanged(m).into(),
            None => io_err(dest)(e),
        });
    }
    fs::rename(&tmp, dest).map_err(io_err(dest))
}

/// Reads back the index of a layout directory (used by tests and by `oci-layout://` sources).
pub fn read_index(dir: &Path) -> Result<Index> {
    let p = dir.join("index.json");
    let bytes = fs::read(&p).map_err(io_err(&p))?;
    serde_json::from_slice(&bytes).map_err(|e| io_err(&p)(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(tag_of("app:1").unwrap(), "1");
        assert_eq!(tag_of("localhost:5000/app").unwrap(), "latest");
        assert_eq!(tag_of("localhost:5000/app:v2").unwrap(), "v2");
        let pinned = format!("app@{}", Digest::of(b"x"));
        assert_eq!(tag_of(&pinned).unwrap(), "latest");
        // Names are references: what docker refuses is refused, not guessed at.
        let err = tag_of("App:1").unwrap_err().to_string();
        assert!(err.contains("must be lowercase"), "{err}");
        assert!(tag_of("app:").is_err());
    }

    /// Flips one bit of `path` at `at`, as a bad disk would.
    pub(crate) fn flip_byte(path: &Path, at: u64) {
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

    /// A store holding an image of one layer (its blob in the store).
    pub(crate) fn store_with_image(
        t: &tempfile::TempDir,
    ) -> (Store, kiln_snapshot::Snapshot, Image) {
        let store =
            Store::open_with(t.path().join("s"), kiln_snapshot::SnapshotterKind::Copy).unwrap();
        let b = store.new_layer().unwrap();
        fs::write(b.fs_dir().join("f"), vec![7u8; 50_000]).unwrap();
        let snap = kiln_snapshot::Snapshot {
            layers: vec![b.commit().unwrap()],
        };
        let config: kiln_types::image::ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let image =
            crate::assemble_image(&store, &snap, config, crate::ImageOptions::gzip()).unwrap();
        (store, snap, image)
    }

    #[test]
    fn a_blob_changed_on_disk_is_never_exported() {
        let t = tempfile::tempdir().unwrap();
        let (store, _, image) = store_with_image(&t);
        let layer = image.layers[0].digest;
        flip_byte(&store.blob_path(&layer), image.layers[0].size / 2);

        let tar = t.path().join("out/app.tar");
        let err = export_oci(&store, &image, &[], &tar, true).unwrap_err();
        assert_eq!(err.changed_blob(), Some(&layer), "{err}");
        assert!(err.to_string().contains(&layer.to_string()), "{err}");
        assert!(!tar.exists(), "no tarball is left");
        assert!(
            !tar.with_extension("kiln-tmp").exists(),
            "nor its temporary"
        );

        let dir = t.path().join("layout");
        let err = export_oci(&store, &image, &[], &dir, false).unwrap_err();
        assert_eq!(err.changed_blob(), Some(&layer), "{err}");
        assert!(!dir.join("blobs/sha256").join(layer.hex()).exists());

        let err = crate::export_docker(&store, &image, &[], &t.path().join("d.tar")).unwrap_err();
        assert_eq!(err.changed_blob(), Some(&layer), "{err}");

        // A changed config is refused too, by every exporter.
        let t = tempfile::tempdir().unwrap();
        let (store, _, image) = store_with_image(&t);
        let config = image.manifest_doc.config.digest;
        flip_byte(&store.blob_path(&config), 2);
        let err = export_oci(&store, &image, &[], &tar, true).unwrap_err();
        assert_eq!(err.changed_blob(), Some(&config), "{err}");
        let err = crate::export_docker(&store, &image, &[], &t.path().join("d.tar")).unwrap_err();
        assert_eq!(err.changed_blob(), Some(&config), "{err}");
    }

    #[test]
    fn a_layer_is_never_recompressed_from_a_changed_blob() {
        let t = tempfile::tempdir().unwrap();
        let (store, snap, image) = store_with_image(&t);
        let zstd = crate::ImageOptions {
            format: crate::ImageFormat {
                compression: crate::CompressionKind::Zstd,
                ..crate::ImageFormat::default()
            },
            source_date_epoch: None,
        };
        let first =
            crate::assemble_image(&store, &snap, image.config.clone(), zstd.clone()).unwrap();
        let tar = store
            .layer_blob(&snap.layers[0], kiln_snapshot::Compression::Uncompressed)
            .unwrap();
        flip_byte(&store.blob_path(&tar.digest), 600);
        let err =
            crate::assemble_image(&store, &snap, image.config.clone(), zstd.clone()).unwrap_err();
        assert_eq!(err.changed_blob(), Some(&tar.digest), "{err}");
        store.drop_blob(&tar.digest).unwrap();
        let again = crate::assemble_image(&store, &snap, image.config, zstd).unwrap();
        assert_eq!(again.layers, first.layers);
    }

    #[test]
    fn after_the_changed_blob_is_dropped_the_same_image_is_exported() {
        let t = tempfile::tempdir().unwrap();
        let (store, snap, image) = store_with_image(&t);
        let layer = image.layers[0].digest;
        flip_byte(&store.blob_path(&layer), 40);
        let tar = t.path().join("app.tar");
        let err = export_oci(&store, &image, &[], &tar, true).unwrap_err();
        let bad = *err.changed_blob().unwrap();
        store.drop_blob(&bad).unwrap();
        let config: kiln_types::image::ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let again =
            crate::assemble_image(&store, &snap, config, crate::ImageOptions::gzip()).unwrap();
        assert_eq!(again.manifest.digest, image.manifest.digest);
        export_oci(&store, &again, &[], &tar, true).unwrap();
        // Every blob of the tarball hashes to its name.
        let mut archive = tar::Archive::new(fs::File::open(&tar).unwrap());
        let mut blobs = 0;
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
                assert_eq!(Digest::of(&bytes).hex(), hex);
                blobs += 1;
            }
        }
        assert_eq!(blobs, 3);
    }
}
