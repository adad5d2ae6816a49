//! `oci-layout://` images: `index.json` → (nested indexes) → platform manifest, blobs copied
//! from `<dir>/blobs/sha256/` into the store, every one checked against its digest.

use std::io::{Read, Write};
use std::path::PathBuf;

use kiln_snapshot::Store;
use kiln_types::image::{Descriptor, Index, ANNOTATION_REF_NAME};
use kiln_types::{Digest, Platform, Sha256Writer};

use crate::remote::read_config;
use crate::select::{
    check_layer_count, check_size, parse_document, select_platform, Document, MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE, MAX_NESTING,
};
use crate::{Error, ImageRef, LayoutRef, Op, ResolvedImage};

/// Error context for one layout image.
struct Ctx {
    dir: PathBuf,
    image: String,
    op: Op,
}

impl Ctx {
    fn err(&self, why: impl Into<String>) -> Error {
        Error::Layout {
            op: self.op,
            image: self.image.clone(),
            why: why.into(),
        }
    }

    /// A manifest, index or config that cannot be used (too large, not JSON, inconsistent).
    fn bad(&self, why: impl Into<String>) -> Error {
        Error::BadDocument {
            op: self.op,
            image: self.image.clone(),
            why: why.into(),
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// Reads a manifest or index whole, size-checked before it is read, verified.
    fn read_manifest(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let path = self.blob_path(digest);
        let bytes = read_limited(
            self,
            &path,
            &format!("manifest {digest}"),
            MAX_MANIFEST_SIZE,
        )?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(self.mismatch(digest, &actual));
        }
        Ok(bytes)
    }

    fn mismatch(&self, expected: &Digest, actual: &Digest) -> Error {
        Error::DigestMismatch {
            op: self.op,
            image: self.image.clone(),
            what: "blob",
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    /// Streams a blob from the layout into the store, verified before it is published.
    fn copy_blob(&self, digest: &Digest, store: &Store) -> Result<(), Error> {
        let path = self.blob_path(digest);
        let io = |e: std::io::Error| self.err(format!("cannot copy {}: {e}", path.display()));
        let mut src = std::fs::File::open(&path).map_err(io)?;
        let mut out = store.blob_writer().map_err(|source| Error::Store {
            op: self.op,
            image: self.image.clone(),
            source,
        })?;
        let mut hash = Sha256Writer::default();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = src.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io)?;
        }
        let actual = hash.finish();
        if actual != *digest {
            return Err(self.mismatch(digest, &actual));
        }
        out.commit(Some(digest)).map_err(|source| Error::Store {
            op: self.op,
            image: self.image.clone(),
            source,
        })?;
        Ok(())
    }
}

fn ctx(l: &LayoutRef, op: Op) -> Ctx {
    Ctx {
        dir: l.dir.clone(),
        image: ImageRef::Layout(l.clone()).to_string(),
        op,
    }
}

fn join_error(c: &Ctx, e: tokio::task::JoinError) -> Error {
    c.err(format!("reader task failed: {e}"))
}

pub(crate) async fn resolve(
    l: &LayoutRef,
    platform: &Platform,
    store: &Store,
) -> Result<ResolvedImage, Error> {
    let (l, platform, store) = (l.clone(), platform.clone(), store.clone());
    let c = ctx(&l, Op::Resolve);
    // Plain file reads: keep them off the async threads.
    tokio::task::spawn_blocking(move || resolve_blocking(&l, &platform, &store))
        .await
        .map_err(|e| join_error(&c, e))?
}

fn resolve_blocking(
    l: &LayoutRef,
    platform: &Platform,
    store: &Store,
) -> Result<ResolvedImage, Error> {
    let c = ctx(l, Op::Resolve);
    let mut digest = match l.digest {
        Some(d) => d,
        None => pick_by_tag(&c, &read_index(&c)?, l.tag.as_deref())?.digest,
    };
    for _ in 0..=MAX_NESTING {
        let bytes = c.read_manifest(&digest)?;
        match parse_document(&bytes).map_err(|why| c.bad(why))? {
            Document::Index(index) => {
                digest = select_platform(&index, platform)
                    .map_err(|available| Error::NoMatchingPlatform {
                        image: c.image.clone(),
                        wanted: platform.to_string(),
                        available,
                    })?
                    .digest;
            }
            Document::Manifest(manifest) => {
                let config_digest = manifest.config.digest;
                if !crate::remote::has_intact_blob(store, &config_digest) {
                    let path = c.blob_path(&config_digest);
                    let size = std::fs::metadata(&path)
                        .map_err(|e| c.err(format!("cannot read {}: {e}", path.display())))?
                        .len();
                    check_size(
                        &format!("image config {config_digest}"),
                        size,
                        MAX_CONFIG_SIZE,
                    )
                    .map_err(|why| c.bad(why))?;
                    c.copy_blob(&config_digest, store)?;
                }
                let config = read_config(store, &config_digest).map_err(|why| c.bad(why))?;
                check_layer_count(&manifest, &config).map_err(|why| c.bad(why))?;
                return Ok(ResolvedImage {
                    reference: ImageRef::Layout(l.clone()).pinned(digest),
                    manifest_digest: digest,
                    config_digest,
                    config,
                    layers: manifest.layers.clone(),
                    manifest,
                });
            }
        }
    }
    Err(c.bad(format!("image indexes nested more than {MAX_NESTING} deep")))
}

fn read_index(c: &Ctx) -> Result<Index, Error> {
    let path = c.dir.join("index.json");
    if let Err(e) = std::fs::metadata(&path) {
        return Err(c.err(format!(
            "cannot read {}: {e} (is {} an OCI image layout?)",
            path.display(),
            c.dir.display()
        )));
    }
    let bytes = read_limited(c, &path, &path.display().to_string(), MAX_MANIFEST_SIZE)?;
    serde_json::from_slice(&bytes).map_err(|e| c.bad(format!("invalid {}: {e}", path.display())))
}

/// Reads `path` whole when it holds at most `max` bytes. The file is read through a bound too,
/// so one that grows after the size check still cannot make kiln read more.
fn read_limited(c: &Ctx, path: &std::path::Path, what: &str, max: u64) -> Result<Vec<u8>, Error> {
    let cannot = |e: std::io::Error| c.err(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let size = file.metadata().map_err(cannot)?.len();
    check_size(what, size, max).map_err(|why| c.bad(why))?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(max + 1).read_to_end(&mut bytes).map_err(cannot)?;
    check_size(what, bytes.len() as u64, max).map_err(|why| c.bad(why))?;
    Ok(bytes)
}

/// The `index.json` entry named `tag` (`org.opencontainers.image.ref.name`; a full reference
/// ending in `:tag` also counts), or the only entry when no tag is given.
fn pick_by_tag<'a>(c: &Ctx, index: &'a Index, tag: Option<&str>) -> Result<&'a Descriptor, Error> {
    let name = |d: &Descriptor| d.annotations.get(ANNOTATION_REF_NAME).cloned();
    let tags = || {
        let names: Vec<String> = index.manifests.iter().filter_map(name).collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    let index_json = c.dir.join("index.json");
    match tag {
        None => match index.manifests.as_slice() {
            [only] => Ok(only),
            [] => Err(c.err(format!("{} lists no images", index_json.display()))),
            _ => Err(c.err(format!(
                "{} lists {} images: give a tag (tags: {})",
                index_json.display(),
                index.manifests.len(),
                tags()
            ))),
        },
        Some(t) => {
            let suffix = format!(":{t}");
            index
                .manifests
                .iter()
                .find(|d| name(d).as_deref() == Some(t))
                .or_else(|| {
                    index
                        .manifests
                        .iter()
                        .find(|d| name(d).is_some_and(|n| n.ends_with(&suffix)))
                })
                .ok_or_else(|| {
                    c.err(format!(
                        "no image tagged {t:?} in {} (tags: {})",
                        index_json.display(),
                        tags()
                    ))
                })
        }
    }
}

/// Copies the given layer blobs from the layout directory of `image` into `store`.
pub(crate) async fn copy_blobs(
    l: &LayoutRef,
    blobs: &[&Descriptor],
    store: &Store,
) -> Result<(), Error> {
    let c = ctx(l, Op::FetchLayers);
    let digests: Vec<Digest> = blobs.iter().map(|d| d.digest).collect();
    let store = store.clone();
    let dir: PathBuf = l.dir.clone();
    let image = c.image.clone();
    tokio::task::spawn_blocking(move || {
        let c = Ctx {
            dir,
            image,
            op: Op::FetchLayers,
        };
        digests.iter().try_for_each(|d| c.copy_blob(d, &store))
    })
    .await
    .map_err(|e| join_error(&c, e))?
}
