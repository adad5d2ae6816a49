use std::fs;
use std::io::Write;
use std::path::Path;

use kiln_snapshot::Store;
use kiln_types::image::{Index, ANNOTATION_REF_NAME, MEDIA_TYPE_INDEX};
use kiln_types::reference::{Reference, DEFAULT_TAG};
use kiln_types::Digest;

use crate::{io_err, Image, Result};

/// The `oci-layout` file of every layout kiln writes.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// containerd's annotation with the full image name; BuildKit writes it too.
pub(crate) const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

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
pub(crate) fn tag_of(name: &str) -> Result<String> {
    let r = Reference::parse_normalized(name)?;
    Ok(r.tag.unwrap_or_else(|| DEFAULT_TAG.to_owned()))
}

pub(crate) fn write_dir(store: &Store, blobs: &[Digest], index: &[u8], dest: &Path) -> Result<()> {
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

pub(crate) fn write_tar(store: &Store, blobs: &[Digest], index: &[u8], dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let written = Written::new(store, index, dest);
    if written.as_ref().is_some_and(Written::still_there) {
        return Ok(());
    }
    // Write beside the destination and rename, so a failed export leaves no truncated tarball.
    let tmp = dest.with_extension("kiln-tmp");
    // Readable too: the hasher reads back what was written.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    let res = write_tar_into(store, blobs, index, &file, dest)
        .and_then(|()| file.sync_all().map_err(io_err(dest)));
    drop(file);
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dest).map_err(io_err(dest))?;
    if let Some(w) = written {
        w.record(store);
    }
    Ok(())
}

/// The record of a tarball this store wrote, so that exporting the same image to the same
/// file again (a no-op rebuild) leaves the file as it is instead of copying every blob again:
/// `exports/<sha256 of the tarball's absolute path>` in the store holds the digest of the
/// tarball's `index.json` (which names the manifest, hence every blob and the whole tar
/// stream) and the file's identity right after it was renamed into place: device, inode,
/// size, mtime and ctime in nanoseconds. Any write to the file, a replacement (another inode)
/// or a removal changes that identity, and the tarball is written again; the ctime cannot be
/// set back by a user. Nothing leaves the store when the file is kept, so there is nothing to
/// verify: its blobs were verified as they were copied into it.
struct Written {
    record: std::path::PathBuf,
    dest: std::path::PathBuf,
    index: Digest,
    root: std::path::PathBuf,
}

impl Written {
    /// `None` when the destination has no absolute path (its directory cannot be resolved).
    fn new(store: &Store, index: &[u8], dest: &Path) -> Option<Written> {
        let parent = match dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => fs::canonicalize(p).ok()?,
            None => std::env::current_dir().ok()?,
        };
        let dest = parent.join(dest.file_name()?);
        let key = Digest::of(dest.as_os_str().as_encoded_bytes());
        Some(Written {
            record: store.root().join("exports").join(key.hex()),
            dest,
            index: Digest::of(index),
            root: store.root().to_owned(),
        })
    }

    /// What the record says when the tarball is the one written for this image.
    fn line(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(&self.dest).ok()?;
        if !m.is_file() {
            return None;
        }
        Some(format!(
            "{} {} {} {} {}.{:09} {}.{:09}\n",
            self.index,
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ))
    }

    /// Whether the destination is, untouched, the tarball of this image this store wrote.
    fn still_there(&self) -> bool {
        match (fs::read_to_string(&self.record), self.line()) {
            (Ok(recorded), Some(now)) => recorded == now,
            _ => false,
        }
    }

    /// Records the tarball just written. Best effort: without a record the next export of the
    /// same image writes the tarball again, which is only slower.
    fn record(&self, store: &Store) {
        let Some(line) = self.line() else { return };
        // Written in a temporary of this build's session, then renamed: atomic.
        let Ok(tmp) = store.temp_dir("export-record") else {
            return;
        };
        let file = tmp.join("record");
        let _ = fs::create_dir_all(self.record.parent().unwrap_or(&self.root))
            .and_then(|()| fs::write(&file, line))
            .and_then(|()| fs::rename(&file, &self.record));
        let _ = fs::remove_dir_all(&tmp);
    }
}

/// Bytes handed to the kernel per copy call; the hasher follows one piece behind.
const PIECE: u64 = 4 << 20;

/// Writes the layout's tar stream into `out` (at its current position, from 0): the same bytes
/// a `tar::Builder` writes (ustar headers, mode 0644/0755, mtime 0, two zero blocks at the end).
fn write_tar_into(
    store: &Store,
    blobs: &[Digest],
    index: &[u8],
    out: &fs::File,
    dest: &Path,
) -> Result<()> {
    let mut t = TarOut { out, pos: 0 };
    (|| -> std::io::Result<()> {
        t.put(layout_tar_header("blobs/", 0, true)?.as_bytes())?;
        t.put(layout_tar_header("blobs/sha256/", 0, true)?.as_bytes())
    })()
    .map_err(io_err(dest))?;
    for d in blobs {
        let path = store.blob_path(d);
        let src = fs::File::open(&path).map_err(io_err(&path))?;
        let size = src.metadata().map_err(io_err(&path))?.len();
        let h = layout_tar_header(&format!("blobs/sha256/{}", d.hex()), size, false)
            .map_err(io_err(dest))?;
        t.put(h.as_bytes()).map_err(io_err(dest))?;
        copy_verified(&src, &path, size, out, t.pos, d).map_err(|e| match e {
            Copy::Changed(m) => kiln_snapshot::Error::BlobChanged(m).into(),
            Copy::Io(e) => io_err(dest)(e),
        })?;
        t.pos += size;
        t.put(&[0u8; 512][..padding(size)]).map_err(io_err(dest))?;
    }
    (|| -> std::io::Result<()> {
        for (name, data) in [("index.json", index), ("oci-layout", OCI_LAYOUT)] {
            t.put(layout_tar_header(name, data.len() as u64, false)?.as_bytes())?;
            t.put(data)?;
            t.put(&[0u8; 512][..padding(data.len() as u64)])?;
        }
        t.put(&[0u8; 1024])
    })()
    .map_err(io_err(dest))
}

/// The tarball being written and where its end is.
struct TarOut<'a> {
    out: &'a fs::File,
    pos: u64,
}

impl TarOut<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = self.out;
        w.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

/// Zero bytes after `size` bytes of data up to the next 512-byte block.
fn padding(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

/// The ustar header of a layout entry (mode 0644, or 0755 for a directory; mtime 0), so that
/// every layout tarball kiln writes, on one machine or merged from several, has one form.
pub fn layout_tar_header(path: &str, size: u64, dir: bool) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    if dir {
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
    } else {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
    }
    h.set_size(size);
    h.set_mtime(0);
    h.set_path(path)?;
    h.set_cksum();
    Ok(h)
}

/// Why a blob's copy into the tarball failed.
enum Copy {
    /// The bytes written do not hash to the blob's digest.
    Changed(kiln_snapshot::verify::BlobMismatch),
    Io(std::io::Error),
}

/// Copies `size` bytes of blob `digest` (open as `src`) into `out` at `at`, in the kernel
/// (`copy_file_range` under `std::io::copy`: no trip through user space), while another thread
/// hashes what landed in `out`, one piece behind. What is hashed is the tarball's own bytes,
/// so a blob changed on disk, or changing during the copy, fails the export: the caller
/// removes the unfinished tarball. The bytes are read once to be hashed and never again.
fn copy_verified(
    src: &fs::File,
    path: &Path,
    size: u64,
    out: &fs::File,
    at: u64,
    digest: &Digest,
) -> Result<(), Copy> {
    use std::os::unix::fs::FileExt;
    let (tx, rx) = std::sync::mpsc::channel::<(u64, u64)>();
    std::thread::scope(|s| {
        let hasher = s.spawn(move || -> std::io::Result<kiln_types::Sha256Writer> {
            let mut hash = kiln_types::Sha256Writer::default();
            let mut buf = vec![0u8; 1 << 20];
            for (off, len) in rx {
                let mut done = 0;
                while done < len {
                    let n =
                        usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
                    out.read_exact_at(&mut buf[..n], off + done)?;
                    hash.update(&buf[..n]);
                    done += n as u64;
                }
            }
            Ok(hash)
        });
        let copied = (|| -> std::io::Result<()> {
            let mut done = 0;
            let mut from = src;
            let mut to = out;
            while done < size {
                let want = (size - done).min(PIECE);
                let n = std::io::copy(&mut std::io::Read::take(&mut from, want), &mut to)?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("blob {} ended after {done} of {size} bytes", path.display()),
                    ));
                }
                // A closed channel means the hasher failed: its error is reported below.
                let _ = tx.send((at + done, n));
                done += n;
            }
            Ok(())
        })();
        drop(tx);
        let hashed = hasher
            .join()
            .map_err(|_| Copy::Io(std::io::Error::other("the blob hashing thread failed")))?;
        copied.map_err(Copy::Io)?;
        let hash = hashed.map_err(Copy::Io)?;
        let actual = hash.finish();
        if actual != *digest {
            return Err(Copy::Changed(kiln_snapshot::verify::BlobMismatch {
                digest: *digest,
                actual,
                size,
            }));
        }
        Ok(())
    })
}

/// Reads back the index of a layout directory (used by tests and by `oci-layout://` sources).
pub fn read_index(dir: &Path) -> Result<Index> {
    let p = dir.join("index.json");
    let bytes = fs::read(&p).map_err(io_err(&p))?;
    serde_json::from_slice(&bytes).map_err(|e| io_err(&p)(std::io::Error::other(e)))
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// The tarball as `tar::Builder` writes it (what kiln wrote before the kernel copy).
    fn builder_tarball(store: &Store, blobs: &[Digest], index: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], dir: bool| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(if dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_mode(if dir { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            b.append_data(&mut h, path, data).unwrap();
        };
        add("blobs/", b"", true);
        add("blobs/sha256/", b"", true);
        for d in blobs {
            add(
                &format!("blobs/sha256/{}", d.hex()),
                &store.read_blob(d).unwrap(),
                false,
            );
        }
        add("index.json", index, false);
        add("oci-layout", OCI_LAYOUT, false);
        b.into_inner().unwrap()
    }

    #[test]
    fn the_kernel_copied_tarball_has_the_bytes_of_a_tar_builder() {
        let t = tempfile::tempdir().unwrap();
        let (store, _, image) = store_with_image(&t);
        // A blob larger than one copy piece, and one of an odd size, to test the pieces and
        // the padding.
        let mut x: u32 = 1;
        let big: Vec<u8> = (0..PIECE as usize * 2 + 777)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let extra = [
            store.write_blob(&big).unwrap(),
            store.write_blob(b"odd").unwrap(),
        ];
        let mut blobs = image.blobs();
        blobs.extend(extra);
        blobs.sort();
        let index = br#"{"schemaVersion":2}"#;
        let dest = t.path().join("out.tar");
        write_tar(&store, &blobs, index, &dest).unwrap();
        assert!(
            fs::read(&dest).unwrap() == builder_tarball(&store, &blobs, index),
            "the tarball differs from tar::Builder's"
        );
        assert!(!dest.with_extension("kiln-tmp").exists());
    }

    #[test]
    fn the_same_image_exported_again_to_its_tarball_leaves_the_file_as_it_is() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let (store, snap, image) = store_with_image(&t);
        let tar = t.path().join("out/app.tar");
        export_oci(&store, &image, &[], &tar, true).unwrap();
        let first = fs::read(&tar).unwrap();
        let ino = fs::metadata(&tar).unwrap().ino();
        // A no-op export: not copied again (a rewrite renames a new file into place).
        export_oci(&store, &image, &[], &tar, true).unwrap();
        assert_eq!(fs::metadata(&tar).unwrap().ino(), ino, "rewritten");
        // Another name is another index: written again.
        export_oci(&store, &image, &["app:2".to_owned()], &tar, true).unwrap();
        let renamed = fs::metadata(&tar).unwrap().ino();
        assert_ne!(renamed, ino);
        export_oci(&store, &image, &[], &tar, true).unwrap();
        assert_eq!(fs::read(&tar).unwrap(), first);

        // A tarball changed after kiln wrote it, even in place and at the same size, is
        // written again.
        let ino = fs::metadata(&tar).unwrap().ino();
        flip_byte(&tar, 700);
        // As an editor would leave it (and so that a kernel with coarse timestamps sees it).
        fs::File::options()
            .write(true)
            .open(&tar)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
            .unwrap();
        export_oci(&store, &image, &[], &tar, true).unwrap();
        assert_ne!(fs::metadata(&tar).unwrap().ino(), ino);
        assert_eq!(fs::read(&tar).unwrap(), first);
        // So is a removed one, and one replaced by another file.
        fs::remove_file(&tar).unwrap();
        export_oci(&store, &image, &[], &tar, true).unwrap();
        assert_eq!(fs::read(&tar).unwrap(), first);
        fs::write(&tar, b"something else").unwrap();
        export_oci(&store, &image, &[], &tar, true).unwrap();
        assert_eq!(fs::read(&tar).unwrap(), first);

        // Another image to the same file: written.
        let config: kiln_types::image::ImageConfig = serde_json::from_str(
            r#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let other =
            crate::assemble_image(&store, &snap, config, crate::ImageOptions::gzip()).unwrap();
        export_oci(&store, &other, &[], &tar, true).unwrap();
        assert_ne!(fs::read(&tar).unwrap(), first);
        // A relative destination names the same file.
        let cwd = std::env::current_dir().unwrap();
        let rel = tar.strip_prefix(&cwd).map(Path::to_path_buf);
        if let Ok(rel) = rel {
            let ino = fs::metadata(&tar).unwrap().ino();
            export_oci(&store, &other, &[], &rel, true).unwrap();
            assert_eq!(fs::metadata(&tar).unwrap().ino(), ino);
        }
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
