//! One OCI layout from the layouts of several nodes: each node sends its platform's image as
//! an OCI layout tarball (the normal output stream of a remote build); the client gathers
//! their blobs (each once, checked against its digest: a daemon's bytes are not trusted to
//! name themselves) and writes the layout a build of every platform on one machine writes:
//! `index.json` naming one image index that lists each platform's manifest, in `--platform`
//! order, made by [`kiln_export::index_document`] as the engine makes it.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use kiln_engine::ImageFormat;
use kiln_types::image::{
    Descriptor, Index, Manifest, ANNOTATION_REF_NAME, MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_INDEX,
};
use kiln_types::{Digest, Platform, Sha256Writer};

use crate::Error;

/// containerd's full-name annotation, which a single image's layout entry carries.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The most `index.json` or manifest bytes read into memory (they are small documents).
const MAX_DOCUMENT: u64 = 4 << 20;

/// Blobs gathered from the nodes' layouts, one file per digest.
pub(crate) struct Blobs {
    dir: PathBuf,
}

/// The images a node's layout holds: each manifest's descriptor, with its platform.
pub(crate) struct NodeLayout {
    pub(crate) manifests: Vec<Descriptor>,
}

impl Blobs {
    /// Blobs kept in `dir` (created).
    pub(crate) fn in_dir(dir: &Path) -> Result<Blobs, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        Ok(Blobs {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    fn read_document(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        let path = self.path(d);
        let f = fs::File::open(&path).map_err(|e| Error::io("read", &path, e))?;
        let mut bytes = Vec::new();
        f.take(MAX_DOCUMENT)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", &path, e))?;
        Ok(bytes)
    }

    /// Reads node `node`'s OCI layout tarball at `tar`: its blobs join the others (verified),
    /// and its images are returned (an index's entries, or the one manifest).
    pub(crate) fn add_layout_tar(&self, node: &str, tar: &Path) -> Result<NodeLayout, Error> {
        let bad = |why: String| Error::Node {
            node: node.to_owned(),
            why: format!("its OCI layout: {why}"),
        };
        let f = fs::File::open(tar).map_err(|e| Error::io("read", tar, e))?;
        let mut archive = tar::Archive::new(f);
        let mut index_json: Option<Vec<u8>> = None;
        for entry in archive.entries().map_err(|e| Error::io("read", tar, e))? {
            let mut entry = entry.map_err(|e| Error::io("read", tar, e))?;
            let path = entry
                .path()
                .map_err(|e| Error::io("read", tar, e))?
                .to_string_lossy()
                .into_owned();
            let path = path.trim_start_matches("./");
            if entry.header().entry_type().is_dir() {
                continue;
            }
            if path == "index.json" {
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(MAX_DOCUMENT)
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::io("read", tar, e))?;
                index_json = Some(bytes);
            } else if path == "oci-layout" {
                continue;
            } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                let digest = Digest::from_hex(hex).map_err(|e| bad(format!("{path}: {e}")))?;
                self.put(&digest, &mut entry, tar).map_err(|e| match e {
                    Put::Mismatch(got) => bad(format!("{path} holds bytes of digest {got}")),
                    Put::Io(e) => e,
                })?;
            } else {
                return Err(bad(format!("unexpected entry {path:?}")));
            }
        }
        let index_json = index_json.ok_or_else(|| bad("no index.json".to_owned()))?;
        let top: Index =
            serde_json::from_slice(&index_json).map_err(|e| bad(format!("index.json: {e}")))?;
        let mut manifests = Vec::new();
        for d in top.manifests {
            if is_index(&d.media_type) {
                let bytes = self.read_document(&d.digest)?;
                let inner: Index = serde_json::from_slice(&bytes)
                    .map_err(|e| bad(format!("index {}: {e}", d.digest)))?;
                manifests.extend(inner.manifests);
            } else {
                let mut d = d;
                // What named the image in the node's layout is not part of the merged index.
                d.annotations.remove(ANNOTATION_REF_NAME);
                d.annotations.remove(ANNOTATION_IMAGE_NAME);
                manifests.push(d);
            }
        }
        Ok(NodeLayout { manifests })
    }

    /// Copies `from` into the blob of `digest` unless it is there already, hashing on the way.
    fn put(&self, digest: &Digest, from: &mut impl Read, tar: &Path) -> Result<(), Put> {
        let dest = self.path(digest);
        if dest.exists() {
            return Ok(());
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)
            .map_err(|e| Put::Io(Error::io("create a file in", &self.dir, e)))?;
        let mut hasher = Sha256Writer::default();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = from
                .read(&mut buf)
                .map_err(|e| Put::Io(Error::io("read", tar, e)))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| Put::Io(Error::io("write", tmp.path(), e)))?;
        }
        let got = hasher.finish();
        if got != *digest {
            return Err(Put::Mismatch(got));
        }
        tmp.persist(&dest)
            .map_err(|e| Put::Io(Error::io("write", &dest, e.error)))?;
        Ok(())
    }

    /// Writes the layout of the index of `manifests` (in that order) at `dest`: a tarball, or a
    /// directory when `as_tar` is false. `names` (`-t`) name it as a one-machine export does.
    /// Only the blobs the index reaches are written, sorted by digest. Returns the index's
    /// descriptor.
    pub(crate) fn write_layout(
        &self,
        manifests: Vec<Descriptor>,
        format: &ImageFormat,
        names: &[String],
        dest: &Path,
        as_tar: bool,
    ) -> Result<Descriptor, Error> {
        let mut blobs = BTreeSet::new();
        for m in &manifests {
            blobs.insert(m.digest);
            let bytes = self.read_document(&m.digest)?;
            let doc: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Node {
                node: String::new(),
                why: format!("manifest {}: {e}", m.digest),
            })?;
            blobs.insert(doc.config.digest);
            blobs.extend(doc.layers.iter().map(|l| l.digest));
        }
        let doc = kiln_export::index_document(manifests, format)?;
        let digest = Digest::of(&doc.bytes);
        let index_path = self.path(&digest);
        fs::write(&index_path, &doc.bytes).map_err(|e| Error::io("write", &index_path, e))?;
        blobs.insert(digest);
        let mut descriptor = Descriptor::new(&doc.media_type, digest, doc.bytes.len() as u64);
        descriptor.annotations = doc.descriptor_annotations;
        let layout_index = kiln_export::layout_index_of(&descriptor, names)?;
        if as_tar {
            self.write_tar(&blobs, &layout_index, dest)?;
        } else {
            self.write_dir(&blobs, &layout_index, dest)?;
        }
        Ok(descriptor)
    }

    fn write_tar(
        &self,
        blobs: &BTreeSet<Digest>,
        layout_index: &[u8],
        dest: &Path,
    ) -> Result<(), Error> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        // As a one-machine export: the destination's directory is made when missing.
        fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        // Written beside the destination and renamed, so a failure leaves no truncated file.
        let tmp = tempfile::Builder::new()
            .prefix(".kiln-output-")
            .tempfile_in(&dir)
            .map_err(|e| Error::io("create a file in", &dir, e))?;
        let io = |e| Error::io("write", dest, e);
        let mut out = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
        for d in ["blobs/", "blobs/sha256/"] {
            let h = kiln_export::layout_tar_header(d, 0, true).map_err(io)?;
            out.append(&h, std::io::empty()).map_err(io)?;
        }
        for d in blobs {
            let path = self.path(d);
            let f = fs::File::open(&path).map_err(|e| Error::io("read", &path, e))?;
            let size = f.metadata().map_err(|e| Error::io("read", &path, e))?.len();
            let h =
                kiln_export::layout_tar_header(&format!("blobs/sha256/{}", d.hex()), size, false)
                    .map_err(io)?;
            out.append(&h, f).map_err(io)?;
        }
        for (name, data) in [
            ("index.json", layout_index),
            ("oci-layout", kiln_export::OCI_LAYOUT),
        ] {
            let h = kiln_export::layout_tar_header(name, data.len() as u64, false).map_err(io)?;
            out.append(&h, data).map_err(io)?;
        }
        out.into_inner().and_then(|mut w| w.flush()).map_err(io)?;
        tmp.persist(dest).map_err(|e| io(e.error))?;
        Ok(())
    }

    fn write_dir(
        &self,
        blobs: &BTreeSet<Digest>,
        layout_index: &[u8],
        dest: &Path,
    ) -> Result<(), Error> {
        let blob_dir = dest.join("blobs/sha256");
        fs::create_dir_all(&blob_dir).map_err(|e| Error::io("create", &blob_dir, e))?;
        for d in blobs {
            let to = blob_dir.join(d.hex());
            if to.exists() {
                continue;
            }
            let from = self.path(d);
            fs::copy(&from, &to).map_err(|e| Error::io("write", &to, e))?;
        }
        for (name, data) in [
            ("oci-layout", kiln_export::OCI_LAYOUT),
            ("index.json", layout_index),
        ] {
            let path = dest.join(name);
            fs::write(&path, data).map_err(|e| Error::io("write", &path, e))?;
        }
        Ok(())
    }
}

/// Why a blob could not be kept.
enum Put {
    /// Its bytes have another digest.
    Mismatch(Digest),
    Io(Error),
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

/// The manifests of `targets`, in that order, taken from the nodes' images (`node`'s name,
/// its images): the image of each platform, found by its descriptor's platform; then the
/// attestation manifest of each of those images (`vnd.docker.reference.digest` naming it),
/// in the same order, as the engine lays out an attested index of several platforms.
pub(crate) fn in_platform_order(
    targets: &[Platform],
    nodes: &[(String, Vec<Descriptor>)],
) -> Result<Vec<Descriptor>, Error> {
    let images = images_in_platform_order(targets, nodes)?;
    let attestations: Vec<Descriptor> = images
        .iter()
        .flat_map(|image| {
            let want = image.digest.to_string();
            nodes.iter().flat_map(|(_, ms)| ms.iter()).filter(move |d| {
                d.annotations.get(kiln_export::ANNOTATION_REFERENCE_TYPE)
                    == Some(&kiln_export::REFERENCE_TYPE_ATTESTATION.to_owned())
                    && d.annotations.get(kiln_export::ANNOTATION_REFERENCE_DIGEST) == Some(&want)
            })
        })
        .cloned()
        .collect();
    Ok(images.into_iter().chain(attestations).collect())
}

fn images_in_platform_order(
    targets: &[Platform],
    nodes: &[(String, Vec<Descriptor>)],
) -> Result<Vec<Descriptor>, Error> {
    targets
        .iter()
        .map(|t| {
            let want = t.normalize();
            nodes
                .iter()
                .flat_map(|(_, ms)| ms.iter())
                .find(|d| d.platform.as_ref().is_some_and(|p| p.normalize() == want))
                .cloned()
                .ok_or_else(|| Error::Node {
                    node: nodes
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    why: format!("no image for {t} in the results"),
                })
        })
        .collect()
}
