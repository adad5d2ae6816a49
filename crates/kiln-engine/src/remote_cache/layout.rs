//! The `type=local` cache: an OCI image layout directory, as BuildKit's local cache exporter
//! writes it (`oci-layout`, `index.json` naming the cache manifest under its tag, `blobs/`).
//!
//! A layout is someone else's directory: every file read is a bounded regular file, and every
//! blob is checked against its digest when it is read or copied into the store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_types::image::{Descriptor, Index, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use kiln_types::{Digest, Sha256Writer};

use super::format::{self, CacheConfig, MEDIA_TYPE_DOCKER_LIST};
use crate::{read_regular_file, Error};

/// Largest `index.json` or cache manifest read (as kiln-registry's manifest limit).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest cache config read: one record per step, a few hundred bytes each.
pub(crate) const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// The path of blob `digest` in layout `dir`.
pub(crate) fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.hex())
}

/// Reads the small blob `desc` of layout `dir`, checking its digest.
fn read_blob(dir: &Path, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, String> {
    let path = blob_path(dir, &desc.digest);
    let bytes = read_regular_file(&path, limit).map_err(|e| format!("{}: {e}", path.display()))?;
    if Digest::of(&bytes) != desc.digest {
        return Err(format!(
            "{}: content does not match its digest {}",
            path.display(),
            desc.digest
        ));
    }
    Ok(bytes)
}

fn read_index(dir: &Path) -> Result<Index, String> {
    let path = dir.join("index.json");
    let bytes = read_regular_file(&path, MAX_MANIFEST_BYTES)
        .map_err(|e| format!("could not read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations
        .get(kiln_types::image::ANNOTATION_REF_NAME)
        .map(String::as_str)
}

/// The records of the cache tagged `tag` in layout `dir`.
pub(crate) fn read_cache(dir: &Path, tag: &str) -> Result<format::Parsed, String> {
    let index = read_index(dir)?;
    let entry = index
        .manifests
        .iter()
        .find(|d| ref_name(d) == Some(tag))
        .ok_or_else(|| {
            format!(
                "{}: no cache tagged {tag:?}",
                dir.join("index.json").display()
            )
        })?;
    let manifest = read_blob(dir, entry, MAX_MANIFEST_BYTES)?;
    let (config_desc, layers, mounts) = format::parse_manifest(&manifest)?;
    let config = read_blob(dir, &config_desc, MAX_CONFIG_BYTES)?;
    let config: CacheConfig = serde_json::from_slice(&config)
        .map_err(|e| format!("cache config {}: {e}", config_desc.digest))?;
    Ok(format::Parsed::new(config, layers).with_mounts(mounts))
}

/// Writes a cache into layout `dir` under `tag`: the blobs first (each copied from its path),
/// then the config and the manifest, and `index.json` last, replaced atomically, so that a
/// reader sees the old cache or the new one. Blobs that no tag of the layout names any more
/// are removed afterwards.
pub(crate) fn write_cache(
    dir: &Path,
    tag: &str,
    blobs: &[(Descriptor, PathBuf, bool)],
    config: &CacheConfig,
    image_manifest: bool,
    oci: bool,
) -> Result<Digest, Error> {
    let blob_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir).map_err(|e| Error::io("create", &blob_dir, e))?;
    for (desc, src, verify) in blobs {
        copy_blob(dir, &desc.digest, src, *verify)?;
    }
    let config_bytes = serde_json::to_vec(config).expect("a cache config always serializes");
    let config_desc = Descriptor::new(
        format::MEDIA_TYPE_CACHE_CONFIG,
        write_bytes(dir, &config_bytes)?,
        config_bytes.len() as u64,
    );
    let layers = blobs.iter().map(|(d, _, _)| d.clone()).collect();
    let (media_type, manifest) = format::manifest(config_desc, layers, image_manifest, oci);
    let mut entry = Descriptor::new(
        &media_type,
        write_bytes(dir, &manifest)?,
        manifest.len() as u64,
    );
    entry.annotations.insert(
        kiln_types::image::ANNOTATION_REF_NAME.to_owned(),
        tag.to_owned(),
    );
    // Other tags of the layout stay; an index.json that cannot be read is replaced.
    let mut index = read_index(dir).unwrap_or(Index {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_INDEX.to_owned()),
        manifests: Vec::new(),
        annotations: BTreeMap::new(),
    });
    index.manifests.retain(|d| ref_name(d) != Some(tag));
    index.manifests.push(entry.clone());
    write_file(dir, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let json = serde_json::to_vec(&index).expect("an index always serializes");
    write_file(dir, "index.json", &json)?;
    remove_unreferenced(dir, &index);
    Ok(entry.digest)
}

/// Writes `name` in `dir` through a temporary file and a rename.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let tmp = dir.join(format!(".{name}.{}.tmp", crate::temp_suffix()));
    let dest = dir.join(name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("write", &dest, e)
    })
}

fn write_bytes(dir: &Path, bytes: &[u8]) -> Result<Digest, Error> {
    let digest = Digest::of(bytes);
    let dest = blob_path(dir, &digest);
    if !dest.is_file() {
        write_file(&dir.join("blobs/sha256"), &digest.hex(), bytes)?;
    }
    Ok(digest)
}

/// Puts blob `digest` (the file `src`) into layout `dir`: a hard link when both are on one
/// filesystem, else a copy through a temporary file. A blob already there is kept. `verify`:
/// `src` is not the store's (whose blobs were checked when written), so it is copied and
/// checked against its digest, never linked.
fn copy_blob(dir: &Path, digest: &Digest, src: &Path, verify: bool) -> Result<(), Error> {
    let dest = blob_path(dir, digest);
    if dest.is_file() {
        return Ok(());
    }
    let tmp =
        dir.join("blobs/sha256")
            .join(format!(".{}.{}.tmp", digest.hex(), crate::temp_suffix()));
    let _ = std::fs::remove_file(&tmp);
    if verify {
        let copied = std::fs::File::create(&tmp)
            .map_err(|e| e.to_string())
            .and_then(|f| copy_verified(src, digest, f));
        if let Err(message) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::CacheExport {
                dest: dir.display().to_string(),
                message,
            });
        }
    } else if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp).map_err(|e| Error::io("copy", src, e))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("rename", &dest, e)
    })
}

/// Copies the blob file `path` into `writer`, checking that it hashes to `digest`.
pub(crate) fn copy_verified(
    path: &Path,
    digest: &Digest,
    mut writer: impl Write,
) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hash = Sha256Writer::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        writer
            .write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let got = hash.finish();
    if got != *digest {
        return Err(format!(
            "{}: content has digest {got}, expected {digest}",
            path.display()
        ));
    }
    Ok(())
}

/// Removes the blobs of `dir` that no entry of `index` reaches. Does nothing when any manifest
/// it names cannot be read: a blob is only removed when it is certainly unused.
fn remove_unreferenced(dir: &Path, index: &Index) {
    let mut keep = BTreeSet::new();
    let mut stack: Vec<Descriptor> = index.manifests.clone();
    while let Some(d) = stack.pop() {
        if !keep.insert(d.digest) {
            continue;
        }
        let is_list = [MEDIA_TYPE_INDEX, MEDIA_TYPE_DOCKER_LIST].contains(&d.media_type.as_str());
        let is_manifest = d.media_type == MEDIA_TYPE_MANIFEST
            || d.media_type == kiln_types::image::MEDIA_TYPE_DOCKER_MANIFEST;
        if !is_list && !is_manifest {
            continue;
        }
        let Ok(bytes) = read_blob(dir, &d, MAX_MANIFEST_BYTES) else {
            return;
        };
        if is_list {
            let Ok(i) = serde_json::from_slice::<Index>(&bytes) else {
                return;
            };
            stack.extend(i.manifests);
        } else {
            let Ok(m) = serde_json::from_slice::<kiln_types::image::Manifest>(&bytes) else {
                return;
            };
            stack.push(m.config);
            stack.extend(m.layers);
        }
    }
    let blob_dir = dir.join("blobs/sha256");
    let Ok(entries) = std::fs::read_dir(&blob_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let referenced = name
            .to_str()
            .and_then(|n| Digest::from_hex(n).ok())
            .is_some_and(|d| keep.contains(&d));
        if !referenced {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote_cache::format::{build_config, LayerRef};

    fn blob(dir: &Path, content: &[u8]) -> (Descriptor, PathBuf, bool) {
        let p = dir.join(Digest::of(content).hex());
        std::fs::write(&p, content).unwrap();
        let mut d = Descriptor::new(
            kiln_types::image::MEDIA_TYPE_LAYER_GZIP,
            Digest::of(content),
            content.len() as u64,
        );
        d.annotations.insert(
            format::ANNOTATION_UNCOMPRESSED.to_owned(),
            Digest::of(b"diff").to_string(),
        );
        (d, p, true)
    }

    fn layer(d: &Descriptor) -> LayerRef {
        LayerRef {
            digest: d.digest,
            media_type: d.media_type.clone(),
            size: d.size,
            diff_id: Some(Digest::of(b"diff")),
        }
    }

    #[test]
    fn export_again_replaces_the_tag_and_drops_unused_blobs() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let cache = t.path().join("cache");
        let (a, b, c) = (blob(&src, b"a"), blob(&src, b"b"), blob(&src, b"c"));
        let key1 = Digest::of(b"k1");
        let first = build_config(&[(key1, vec![layer(&a.0), layer(&b.0)], vec![])]);
        write_cache(
            &cache,
            "latest",
            &[a.clone(), b.clone()],
            &first,
            false,
            true,
        )
        .unwrap();
        let other = build_config(&[(Digest::of(b"k9"), vec![layer(&c.0)], vec![])]);
        write_cache(
            &cache,
            "other",
            std::slice::from_ref(&c),
            &other,
            true,
            true,
        )
        .unwrap();
        let read = read_cache(&cache, "latest").unwrap();
        assert_eq!(read.chain(&key1).unwrap().len(), 2);
        assert!(blob_path(&cache, &b.0.digest).is_file());

        // Again under `latest`, without blob b: b goes, a stays, c stays (tag `other`).
        let key2 = Digest::of(b"k2");
        let second = build_config(&[(key2, vec![layer(&a.0)], vec![])]);
        write_cache(
            &cache,
            "latest",
            std::slice::from_ref(&a),
            &second,
            false,
            true,
        )
        .unwrap();
        let read = read_cache(&cache, "latest").unwrap();
        assert!(read.chain(&key1).is_none());
        assert_eq!(read.chain(&key2), Some(vec![layer(&a.0)]));
        assert!(!blob_path(&cache, &b.0.digest).exists(), "unused blob kept");
        assert!(blob_path(&cache, &a.0.digest).is_file());
        assert!(blob_path(&cache, &c.0.digest).is_file());
        assert_eq!(read_cache(&cache, "other").unwrap().keys().count(), 1);
        let index = read_index(&cache).unwrap();
        assert_eq!(index.manifests.len(), 2);
        assert!(cache.join("oci-layout").is_file());
        let leftovers: Vec<_> = std::fs::read_dir(cache.join("blobs/sha256"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());

        // A tampered blob is refused when read.
        std::fs::write(blob_path(&cache, &a.0.digest), b"evil").unwrap();
        let path = blob_path(&cache, &a.0.digest);
        let err = copy_verified(&path, &a.0.digest, std::io::sink()).unwrap_err();
        assert!(err.contains("expected"), "{err}");
    }

    #[test]
    fn missing_or_foreign_layouts_are_errors_with_the_path() {
        let t = tempfile::tempdir().unwrap();
        let err = read_cache(&t.path().join("nope"), "latest").unwrap_err();
        assert!(
            err.contains("could not read") && err.contains("nope"),
            "{err}"
        );
        std::fs::write(
            t.path().join("index.json"),
            b"{\"schemaVersion\":2,\"manifests\":[]}",
        )
        .unwrap();
        let err = read_cache(t.path(), "latest").unwrap_err();
        assert!(err.contains("no cache tagged \"latest\""), "{err}");
    }
}
