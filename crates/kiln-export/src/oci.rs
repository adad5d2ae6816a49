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
    let res = (|| -> std::io::Result<()> {
        dir(&mut b, "blobs/")?;
        dir(&mut b, "blobs/sha256/")?;
        for d in blobs {
            let p = store.blob_path(d);
            let f = fs::File::open(&p)?;
            let size = f.metadata()?.len();
            entry(&mut b, &format!("blobs/sha256/{}", d.hex()), size, &mut &f)?;
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
        return Err(io_err(dest)(e));
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
}
