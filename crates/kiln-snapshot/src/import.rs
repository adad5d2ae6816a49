//! OCI layer blob → layer directory: the inverse of `layer_tar`, for pulled images.
//!
//! The tar is hostile until proven otherwise. Every entry is created relative to a directory fd
//! reached from the layer root one name at a time with `O_NOFOLLOW|O_DIRECTORY`, so no entry can
//! write through a symlink (one planted by an earlier entry, or any other) or outside the root.
//! Names are normalized like docker does: a leading `/` is dropped (`/etc/x` is `etc/x`), `.` is
//! dropped and `..` is resolved lexically; a `..` that climbs above the root is an error (also
//! after a leading `/`, where docker would clamp it). Hard links must name a regular file that
//! this same tar created earlier. Any error drops the half-written `LayerBuilder`, which removes
//! itself.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use kiln_types::image::{MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD};
use kiln_types::{image::MEDIA_TYPE_DOCKER_LAYER_GZIP, Digest, Sha256Writer};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode,
    SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use xattr::FileExt;

use crate::format::{
    can_create_devices, is_image_xattr, opaque_xattr, unmapped_owner, OPAQUE_MARKER,
    WHITEOUT_PREFIX,
};
use crate::layer_tar::Compression;
use crate::store::{LayerBlob, LayerId, Store};
use crate::tar_limits::{check_entry, shown_name, GuardedReader, HeaderGuard};
use crate::{io_err, Error, Result};

/// A layer made from a blob by [`Store::import_layer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedLayer {
    /// The layer.
    pub id: LayerId,
    /// Digest of the uncompressed tar (what an image config lists in `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Entries that were skipped, one line each (devices when not root, aufs metadata). Empty
    /// when the layer already existed.
    pub notes: Vec<String>,
}

#[derive(Clone, Copy)]
pub(crate) enum Codec {
    Tar,
    Gzip,
    Zstd,
}

pub(crate) fn codec(media_type: &str) -> Option<Codec> {
    match media_type {
        MEDIA_TYPE_LAYER_TAR
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Codec::Tar),
        MEDIA_TYPE_LAYER_GZIP
        | MEDIA_TYPE_DOCKER_LAYER_GZIP
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Codec::Gzip),
        MEDIA_TYPE_LAYER_ZSTD
        | "application/vnd.docker.image.rootfs.diff.tar.zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Codec::Zstd),
        _ => None,
    }
}

/// Hashes what the tar reader consumes: the diff id, computed during extraction.
struct HashReader<R> {
    inner: R,
    hash: Sha256Writer,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

impl Store {
    /// The uncompressed tar stream of layer blob `blob` (gzip, zstd or plain tar by
    /// `media_type`): its bytes hash to the layer's diff id.
    pub fn open_layer_tar(&self, blob: &Digest, media_type: &str) -> Result<Box<dyn Read>> {
        let codec = codec(media_type).ok_or_else(|| Error::UnsupportedMediaType {
            blob: *blob,
            media_type: media_type.to_owned(),
        })?;
        let path = self.blob_path(blob);
        let file = fs::File::open(&path).map_err(io_err("open layer blob", &path))?;
        decoder(codec, file, &path)
    }

    /// Unpacks layer blob `blob` (already in the store) into a new layer directory, refusing
    /// any entry that would reach outside it. The same content (by diff id) imported twice
    /// gives the same layer. For gzip and plain tar blobs, `blob` is recorded as the layer's
    /// exported form, so re-exporting a pulled image keeps its layer digests.
    pub fn import_layer(&self, blob: &Digest, media_type: &str) -> Result<ImportedLayer> {
        let codec = codec(media_type).ok_or_else(|| Error::UnsupportedMediaType {
            blob: *blob,
            media_type: media_type.to_owned(),
        })?;
        // Seen this blob before: skip the extraction.
        if let Some(hex) = self.index_get("by-blob", blob)? {
            if let Ok(diff_id) = Digest::from_hex(&hex) {
                if let Some(id) = self.layer_by_diff_id(&diff_id)? {
                    return Ok(ImportedLayer {
                        id,
                        diff_id,
                        notes: Vec::new(),
                    });
                }
            }
        }

        let path = self.blob_path(blob);
        let file = fs::File::open(&path).map_err(io_err("open layer blob", &path))?;
        let size = file
            .metadata()
            .map_err(io_err("stat layer blob", &path))?
            .len();
        let stream = decoder(codec, file, &path)?;
        let (id, diff_id, notes) = self.import_stream(stream, blob)?;
        self.index_put("by-blob", blob, &diff_id.hex())?;
        let compression = match codec {
            Codec::Tar => Some(Compression::Uncompressed),
            Codec::Gzip => Some(Compression::Gzip),
            Codec::Zstd => None,
        };
        // A layer that already has an exported form keeps it: images built on it already
        // name that blob. Unless that form is another tar of the same files (its blob changed
        // on disk, and an export made one from the layer's directory: see `verify`): the
        // pulled blob comes back, so that images name the registry's layer again.
        if let Some(c) = compression {
            let kept = self.recorded_blob(&id, c)?;
            if kept.is_none_or(|k| k.diff_id != diff_id) {
                let record = LayerBlob {
                    diff_id,
                    digest: *blob,
                    size,
                    media_type: c.media_type().to_owned(),
                };
                self.record_blob(&id, c, &record)?;
            }
        }
        Ok(ImportedLayer { id, diff_id, notes })
    }

    /// Imports an uncompressed layer tar held in memory, with every check of
    /// [`import_layer`](Self::import_layer) (errors name the tar by its digest, which is also its
    /// diff id), but no blob in the store and no exported form recorded. Meant for fuzzing and
    /// tests: open a `Store` on a temporary directory and hand it arbitrary bytes.
    pub fn import_tar_bytes(&self, tar: &[u8]) -> Result<ImportedLayer> {
        let (id, diff_id, notes) = self.import_stream(Box::new(tar), &Digest::of(tar))?;
        Ok(ImportedLayer { id, diff_id, notes })
    }

    /// Extracts the tar `stream` into a new layer (or finds the layer it duplicates) and
    /// indexes it by diff id; `blob` names it in errors.
    fn import_stream(
        &self,
        stream: Box<dyn Read + '_>,
        blob: &Digest,
    ) -> Result<(LayerId, Digest, Vec<String>)> {
        let layer = self.new_layer()?;
        let (diff_id, notes) = extract_tar(stream, blob, &layer.fs_dir())?;
        let id = match self.layer_by_diff_id(&diff_id)? {
            // The same content is already a layer: keep that one, drop this copy.
            Some(id) => id,
            None => {
                let id = layer.commit()?;
                self.index_put("by-diff-id", &diff_id, &id.0)?;
                id
            }
        };
        Ok((id, diff_id, notes))
    }

    /// The layer holding the tar with this diff id, if it was imported and still exists.
    pub fn layer_by_diff_id(&self, diff_id: &Digest) -> Result<Option<LayerId>> {
        Ok(self
            .index_get("by-diff-id", diff_id)?
            .map(LayerId)
            .filter(|id| self.has_layer(id)))
    }
}

/// The uncompressed tar stream of a layer blob read from `input` (`path` names it in errors).
pub(crate) fn decoder<'r>(
    codec: Codec,
    input: impl Read + 'r,
    path: &Path,
) -> Result<Box<dyn Read + 'r>> {
    let input = io::BufReader::new(input);
    Ok(match codec {
        Codec::Tar => Box::new(input),
        Codec::Gzip => Box::new(MultiGzDecoder::new(input)),
        Codec::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(input)
                .map_err(io_err("start zstd decoder for", path))?,
        ),
    })
}

/// Extracts the tar `stream` into the empty directory `root` with every check of
/// [`Store::import_layer`] (`blob` names it in errors); returns its diff id (the digest of the
/// whole stream) and the notes of skipped entries.
pub(crate) fn extract_tar(
    stream: Box<dyn Read + '_>,
    blob: &Digest,
    root: &Path,
) -> Result<(Digest, Vec<String>)> {
    let mut reader = HashReader {
        inner: stream,
        hash: Sha256Writer::default(),
    };
    let notes = Extractor::new(root, blob)?.run(&mut reader)?;
    Ok((reader.hash.finish(), notes))
}

/// The stream the tar reader reads: decompressed, hashed, its headers bounded.
type Stream<'r, 's> = GuardedReader<&'r mut HashReader<Box<dyn Read + 's>>>;

/// Metadata of a directory entry, applied once all entries are written (creating children
/// changes a directory's mtime, and a read-only mode would stop a non-root extractor).
struct DirMeta {
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Extractor<'a> {
    root: OwnedFd,
    root_path: &'a Path,
    blob: &'a Digest,
    is_root: bool,
    /// Root on the host: device nodes can be created (not in a user namespace).
    can_create_devices: bool,
    /// Regular files this tar created, the only valid hard link targets.
    files: HashSet<Vec<OsString>>,
    dirs: BTreeMap<Vec<OsString>, DirMeta>,
    notes: Vec<String>,
    /// The entry being extracted, for error messages.
    entry: String,
    /// Bytes of xattrs held in `dirs` until the end: bounded, as a tar of many directories each
    /// with large xattrs would otherwise hold them all in memory.
    dir_xattr_bytes: usize,
}

/// Most bytes of directory xattrs one layer may hold for the end of its extraction.
const MAX_DIR_XATTR_BYTES: usize = 64 << 20;

/// A refusal, turned into [`Error::BadEntry`] with the blob and entry by `Extractor::bad`.
type Refusal = String;

impl<'a> Extractor<'a> {
    fn new(root_path: &'a Path, blob: &'a Digest) -> Result<Self> {
        let root = nix::fcntl::open(
            root_path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", root_path)(e.into()))?;
        Ok(Extractor {
            root,
            root_path,
            blob,
            is_root: nix::unistd::geteuid().is_root(),
            can_create_devices: can_create_devices(),
            files: HashSet::new(),
            dirs: BTreeMap::new(),
            notes: Vec::new(),
            entry: String::new(),
            dir_xattr_bytes: 0,
        })
    }

    fn bad(&self, why: impl Into<String>) -> Error {
        Error::BadEntry {
            blob: *self.blob,
            entry: self.entry.clone(),
            why: why.into(),
        }
    }

    fn io(&self, op: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::Extract {
            blob: *self.blob,
            entry: self.entry.clone(),
            op,
            source,
        }
    }

    fn sys(&self, op: &'static str) -> impl FnOnce(Errno) -> Error + '_ {
        move |e| (self.io(op))(e.into())
    }

    fn run(mut self, reader: &mut HashReader<Box<dyn Read + '_>>) -> Result<Vec<String>> {
        let (guarded, guard) = HeaderGuard::new(&mut *reader);
        let mut archive = tar::Archive::new(guarded);
        let entries = guard
            .entries(&mut archive)
            .map_err(self.io("read layer tar"))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                self.entry = if self.entry.is_empty() {
                    "(start of tar)".into()
                } else {
                    format!("(tar stream after {:?})", self.entry)
                };
                (self.io("read layer tar"))(e)
            })?;
            self.entry = shown_name(&entry.path_bytes());
            check_entry(&mut entry).map_err(|why| self.bad(why))?;
            self.extract(&mut entry)?;
        }
        self.entry = "(end of tar)".into();
        // The tar ends with zero blocks (and maybe padding) that the reader stops before; the
        // diff id covers the whole stream.
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(self.io("read layer tar"))?;
        self.finish_dirs()?;
        Ok(self.notes)
    }

    fn extract(&mut self, entry: &mut tar::Entry<'_, Stream<'_, '_>>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let path = entry.path().map_err(self.io("read entry name"))?;
        let comps = normalize(&path).map_err(|why| self.bad(why))?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself (`./`): the layer root has no metadata of its own in a layer tar.
            return match kind {
                tar::EntryType::Directory => Ok(()),
                _ => Err(self.bad("a non-directory entry names the layer root")),
            };
        };
        let name = name.clone();
        let parents = parents.to_vec();

        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(entry.header(), &parents, &name, OsStr::from_bytes(hidden));
        }

        // A copy: the entry is read (contents, PAX records) while the header is still needed.
        let header = entry.header().clone();
        let mode = header.mode().map_err(self.io("read mode"))? & 0o7777;
        let owner = self.owner(&header)?;
        let mtime = i64::try_from(header.mtime().map_err(self.io("read mtime"))?)
            .map_err(|_| self.bad("mtime out of range"))?;
        let xattrs = self.xattrs(entry)?;
        let dir = self.open_dir(&parents, true)?;

        match kind {
            tar::EntryType::Directory => {
                match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    // A directory named again keeps its contents; the last metadata wins.
                    Ok(st)
                        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
                            == SFlag::S_IFDIR => {}
                    _ => {
                        self.remove(&dir, &comps)?;
                        mkdirat(&dir, name.as_os_str(), Mode::from_bits_truncate(0o700))
                            .map_err(self.sys("create directory"))?;
                    }
                }
                self.dir_xattr_bytes +=
                    xattrs.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
                if self.dir_xattr_bytes > MAX_DIR_XATTR_BYTES {
                    return Err(self.bad(format!(
                        "the layer's directories carry more than {MAX_DIR_XATTR_BYTES} bytes \
                         of xattrs"
                    )));
                }
                let meta = DirMeta {
                    mode,
                    owner,
                    mtime,
                    xattrs,
                };
                self.dirs.insert(comps, meta);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.remove(&dir, &comps)?;
                let fd = openat(
                    &dir,
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(self.sys("create file"))?;
                let mut file = fs::File::from(fd);
                let written = io::copy(entry, &mut file).map_err(self.io("write file"))?;
                if written != entry.size() {
                    return Err(self.bad(format!(
                        "its header says {} bytes but the tar ends after {written}",
                        entry.size()
                    )));
                }
                self.set_meta_fd(file.as_fd(), mode, owner, mtime, &xattrs)?;
                self.files.insert(comps);
            }
            tar::EntryType::Symlink => {
                // Stored verbatim: a symlink is never followed while the layer is written.
                let target = entry
                    .link_name()
                    .map_err(self.io("read link target"))?
                    .ok_or_else(|| self.bad("symlink without a target"))?;
                self.remove(&dir, &comps)?;
                symlinkat(target.as_os_str(), &dir, name.as_os_str())
                    .map_err(self.sys("create symlink"))?;
                self.set_meta_at(&dir, &name, None, owner, mtime)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(self.io("read link target"))?
                    .ok_or_else(|| self.bad("hard link without a target"))?;
                let tcomps = normalize(&target)
                    .map_err(|why| self.bad(format!("hard link target {target:?} {why}")))?;
                if tcomps == comps {
                    return Err(self.bad("hard link to itself"));
                }
                if !self.files.contains(&tcomps) {
                    return Err(self.bad(format!(
                        "hard link target {target:?} is not a regular file created earlier \
                         in this layer"
                    )));
                }
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(self.bad("hard link to the layer root"));
                };
                let tdir = self.open_dir(tparents, false)?;
                match fstatat(&tdir, tname.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st)
                        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
                            == SFlag::S_IFREG => {}
                    _ => {
                        return Err(self.bad(format!(
                            "hard link target {target:?} is no longer a regular file"
                        )))
                    }
                }
                self.remove(&dir, &comps)?;
                // No AT_SYMLINK_FOLLOW: the link is to the name itself, checked just above.
                linkat(
                    &tdir,
                    tname.as_os_str(),
                    &dir,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(self.sys("create hard link"))?;
                self.files.insert(comps);
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let sflag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dev = if sflag == SFlag::S_IFIFO {
                    0
                } else if !self.can_create_devices {
                    // As moby's pkg/archive in a user namespace (rootless): skipped, noted.
                    self.notes.push(format!(
                        "{}: device node skipped (creating devices needs root on the host)",
                        self.entry
                    ));
                    return Ok(());
                } else {
                    let major = header
                        .device_major()
                        .map_err(self.io("read device number"))?
                        .unwrap_or(0);
                    let minor = header
                        .device_minor()
                        .map_err(self.io("read device number"))?
                        .unwrap_or(0);
                    if major == 0 && minor == 0 && sflag == SFlag::S_IFCHR {
                        // Would read back as a whiteout and hide the path instead.
                        return Err(self.bad(
                            "character device 0/0 is overlay's whiteout; a layer tar \
                             says `.wh.<name>` instead",
                        ));
                    }
                    makedev(u64::from(major), u64::from(minor))
                };
                self.remove(&dir, &comps)?;
                mknodat(
                    &dir,
                    name.as_os_str(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(self.sys("create device node"))?;
                self.set_meta_at(&dir, &name, Some(mode), owner, mtime)?;
            }
            other => {
                return Err(self.bad(format!("unsupported entry type {other:?}")));
            }
        }
        Ok(())
    }

    /// `.wh.<name>` → whiteout `<name>`; `.wh..wh..opq` → the parent is opaque.
    fn whiteout(
        &mut self,
        header: &tar::Header,
        parents: &[OsString],
        marker: &OsStr,
        hidden: &OsStr,
    ) -> Result<()> {
        if marker.as_bytes() == OPAQUE_MARKER.as_bytes() {
            let dir = self.open_dir(parents, true)?;
            fs::File::from(dir)
                .set_xattr(opaque_xattr(), b"y")
                .map_err(self.io("mark directory opaque"))?;
            return Ok(());
        }
        if hidden.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // `.wh..wh.plnk` and friends: aufs bookkeeping, meaningless in an overlay layer.
            self.notes
                .push(format!("{}: aufs metadata skipped", self.entry));
            return Ok(());
        }
        if matches!(hidden.as_bytes(), b"" | b"." | b"..") {
            return Err(self.bad("whiteout of no name"));
        }
        let owner = self.owner(header)?;
        let mtime = i64::try_from(header.mtime().map_err(self.io("read mtime"))?)
            .map_err(|_| self.bad("mtime out of range"))?;
        let dir = self.open_dir(parents, true)?;
        let mut comps = parents.to_vec();
        comps.push(hidden.to_owned());
        self.remove(&dir, &comps)?;
        mknodat(&dir, hidden, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(self.sys("create whiteout"))?;
        // The whiteout's owner and mtime go back into the tar on export: keep them.
        self.set_meta_at(&dir, hidden, None, owner, mtime)
    }

    fn owner(&self, header: &tar::Header) -> Result<Option<(u32, u32)>> {
        if !self.is_root {
            return Ok(None);
        }
        let uid = header.uid().map_err(self.io("read uid"))?;
        let gid = header.gid().map_err(self.io("read gid"))?;
        let uid = u32::try_from(uid).map_err(|_| self.bad(format!("uid {uid} out of range")))?;
        let gid = u32::try_from(gid).map_err(|_| self.bad(format!("gid {gid} out of range")))?;
        Ok(Some((uid, gid)))
    }

    /// The image xattrs of an entry (PAX `SCHILY.xattr.*`); `trusted.*` and other host
    /// namespaces are dropped.
    fn xattrs(&self, entry: &mut tar::Entry<'_, Stream<'_, '_>>) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        let Some(exts) = entry.pax_extensions().map_err(self.io("read PAX header"))? else {
            return Ok(out);
        };
        for ext in exts {
            let ext = ext.map_err(self.io("read PAX header"))?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if is_image_xattr(name) {
                    out.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(out)
    }

    /// Opens the directory `comps` beneath the root one name at a time, never following a
    /// symlink; with `create`, missing directories are made (0755, as docker does).
    fn open_dir(&self, comps: &[OsString], create: bool) -> Result<OwnedFd> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut cur: Option<OwnedFd> = None;
        for c in comps {
            let at: BorrowedFd<'_> = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let next = match openat(at, c.as_os_str(), flags, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    mkdirat(at, c.as_os_str(), Mode::from_bits_truncate(0o755))
                        .map_err(self.sys("create parent directory"))?;
                    let fd = openat(at, c.as_os_str(), flags, Mode::empty())
                        .map_err(self.sys("open parent directory"))?;
                    // Independent of the umask.
                    fchmod(&fd, Mode::from_bits_truncate(0o755))
                        .map_err(self.sys("chmod parent directory"))?;
                    fd
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(self.bad(format!(
                        "path component {c:?} is a symlink or not a directory; \
                         refusing to write through it"
                    )));
                }
                other => other.map_err(self.sys("open parent directory"))?,
            };
            cur = Some(next);
        }
        match cur {
            Some(fd) => Ok(fd),
            None => self.root.try_clone().map_err(self.io("open layer root")),
        }
    }

    /// Makes room for a new entry: a later tar entry replaces an earlier one of the same name.
    fn remove(&mut self, dir: &OwnedFd, comps: &[OsString]) -> Result<()> {
        let Some(name) = comps.last() else {
            return Ok(());
        };
        let st = match fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => return Ok(()),
            other => other.map_err(self.sys("stat existing entry"))?,
        };
        self.files.remove(comps);
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            // The parents were just opened without following symlinks and nothing else writes
            // this private tmp dir, so the path names that same directory; remove_dir_all
            // itself never follows symlinks.
            let path: PathBuf = comps
                .iter()
                .fold(self.root_path.to_owned(), |p, c| p.join(c));
            fs::remove_dir_all(&path).map_err(self.io("replace directory"))?;
        } else {
            unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(self.sys("replace entry"))?;
        }
        Ok(())
    }

    /// A failed chown; in a user namespace (rootless kiln) an owner outside its ids says so
    /// instead of the kernel's bare EINVAL.
    fn chown_err(&self, e: nix::Error, uid: u32, gid: u32) -> Error {
        match (e, unmapped_owner(uid, gid)) {
            (nix::Error::EINVAL, Some(why)) => self.bad(format!("owner {uid}:{gid}: {why}")),
            _ => self.sys("chown")(e),
        }
    }

    fn set_meta_fd(
        &self,
        fd: BorrowedFd<'_>,
        mode: u32,
        owner: Option<(u32, u32)>,
        mtime: i64,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        if let Some((uid, gid)) = owner {
            fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| self.chown_err(e, uid, gid))?;
        }
        // After chown, which clears setuid/setgid bits.
        fchmod(fd, Mode::from_bits_truncate(mode)).map_err(self.sys("chmod"))?;
        let file = fs::File::from(fd.try_clone_to_owned().map_err(self.io("dup"))?);
        for (name, value) in xattrs {
            file.set_xattr(name, value).map_err(self.io("set xattr"))?;
        }
        let t = TimeSpec::new(mtime, 0);
        futimens(fd, &t, &t).map_err(self.sys("set mtime"))
    }

    /// Owner, mode (not for symlinks) and mtime of an entry that cannot be opened.
    fn set_meta_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
        mtime: i64,
    ) -> Result<()> {
        if let Some((uid, gid)) = owner {
            fchownat(
                dir,
                name,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.chown_err(e, uid, gid))?;
        }
        if let Some(mode) = mode {
            // Only devices and fifos get here; they are not symlinks, so following is moot.
            fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(self.sys("chmod"))?;
        }
        let t = TimeSpec::new(mtime, 0);
        utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(self.sys("set mtime"))
    }

    /// Applies directory metadata deepest first, so setting a child's mtime does not disturb
    /// its parent's.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (comps, meta) in dirs.into_iter().rev() {
            self.entry = comps
                .iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let dir = match self.open_dir(&comps, false) {
                Ok(d) => d,
                // Replaced by a later entry (a file, a whiteout): its metadata went with it.
                Err(Error::BadEntry { .. }) => continue,
                Err(Error::Extract { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    continue
                }
                Err(e) => return Err(e),
            };
            self.set_meta_fd(dir.as_fd(), meta.mode, meta.owner, meta.mtime, &meta.xattrs)?;
        }
        Ok(())
    }
}

/// Entry name → components beneath the root, or why not.
fn normalize(path: &Path) -> Result<Vec<OsString>, Refusal> {
    let mut out: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err("climbs above the layer root with `..`".into());
                }
            }
            Component::Normal(n) => out.push(n.to_owned()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<Vec<String>, Refusal> {
        normalize(Path::new(p)).map(|v| {
            v.into_iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn names_are_normalized_like_docker() {
        assert_eq!(n("/etc/x").unwrap(), ["etc", "x"]);
        assert_eq!(n("./a/./b/../c").unwrap(), ["a", "c"]);
        assert_eq!(n("./").unwrap(), Vec::<String>::new());
        assert!(n("../../etc/x").is_err());
        assert!(n("a/../../x").is_err());
        assert!(n("/../x").is_err());
    }

    #[test]
    fn media_types() {
        assert!(matches!(codec(MEDIA_TYPE_LAYER_GZIP), Some(Codec::Gzip)));
        assert!(matches!(
            codec(MEDIA_TYPE_DOCKER_LAYER_GZIP),
            Some(Codec::Gzip)
        ));
        assert!(matches!(codec(MEDIA_TYPE_LAYER_ZSTD), Some(Codec::Zstd)));
        assert!(matches!(codec(MEDIA_TYPE_LAYER_TAR), Some(Codec::Tar)));
        assert!(codec("application/json").is_none());
    }
}
