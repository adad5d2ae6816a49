//! Upper dir → OCI layer tar. Overlay whiteouts (char device 0/0) become `.wh.<name>`, opaque
//! directories get `.wh..wh..opq`, and only `user.*` and `security.capability` xattrs are kept:
//! `trusted.overlay.*` describes the overlay mount, not the image.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use kiln_types::image::{MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR};
use kiln_types::{Digest, Sha256Writer};

use crate::format::{is_image_xattr, is_opaque, is_whiteout, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::{io_err, Result};

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    Uncompressed,
    /// gzip (the default; what every client reads).
    Gzip,
}

impl Compression {
    /// Name used in store metadata.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Uncompressed => "tar",
            Compression::Gzip => "gzip",
        }
    }

    /// OCI media type of a layer with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Uncompressed => MEDIA_TYPE_LAYER_TAR,
            Compression::Gzip => MEDIA_TYPE_LAYER_GZIP,
        }
    }
}

/// Hashes the uncompressed stream (the diff id) on its way into the compressor.
struct Tee<W: Write> {
    inner: W,
    hash: Sha256Writer,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the layer tar of upper dir `dir` to `out`, returning its diff id. Entries are sorted
/// by name and carry the files' own metadata, so the same directory always gives the same bytes.
pub fn write_layer_tar(
    dir: &Path,
    compression: Compression,
    out: &mut dyn Write,
) -> Result<Digest> {
    write_layer_tar_clamped(dir, compression, None, out)
}

/// [`write_layer_tar`], with every entry's mtime clamped to `clamp_mtime` (seconds since the
/// epoch) when given: entries newer than it get it, older ones keep theirs. This is BuildKit's
/// `rewrite-timestamp=true` with `SOURCE_DATE_EPOCH`, which makes a layer independent of when
/// the build ran.
pub fn write_layer_tar_clamped(
    dir: &Path,
    compression: Compression,
    clamp_mtime: Option<u64>,
    out: &mut dyn Write,
) -> Result<Digest> {
    let map = |e: io::Error| crate::Error::Io {
        op: "write layer tar of",
        path: dir.to_owned(),
        source: e,
    };
    match compression {
        Compression::Uncompressed => {
            let mut tee = Tee {
                inner: out,
                hash: Sha256Writer::default(),
            };
            write_tar(dir, clamp_mtime, &mut tee)?;
            Ok(tee.hash.finish())
        }
        Compression::Gzip => {
            let gz = crate::gzip::AdaptiveGz::new(out).map_err(map)?;
            let mut tee = Tee {
                inner: gz,
                hash: Sha256Writer::default(),
            };
            write_tar(dir, clamp_mtime, &mut tee)?;
            tee.inner.finish().map_err(map)?;
            Ok(tee.hash.finish())
        }
    }
}

/// What [`write_layer_blob`] wrote.
pub(crate) struct BlobDigests {
    /// SHA-256 of the uncompressed tar.
    pub(crate) diff_id: Digest,
    /// SHA-256 of the bytes written.
    pub(crate) digest: Digest,
    /// Length of the bytes written.
    pub(crate) size: u64,
}

/// [`write_layer_tar_clamped`] for a store blob: also returns the digest and size of what was
/// written. The writing thread only reads the files and writes: the tar and the gzip stream
/// are hashed by the compressor's background threads (with no compression the tar is the blob
/// and is hashed once).
pub(crate) fn write_layer_blob(
    dir: &Path,
    compression: Compression,
    clamp_mtime: Option<u64>,
    out: &mut dyn Write,
) -> Result<BlobDigests> {
    let map = |e: io::Error| crate::Error::Io {
        op: "write layer tar of",
        path: dir.to_owned(),
        source: e,
    };
    match compression {
        Compression::Uncompressed => {
            let mut tee = Tee {
                inner: out,
                hash: Sha256Writer::default(),
            };
            write_tar(dir, clamp_mtime, &mut tee)?;
            let size = tee.hash.len();
            let digest = tee.hash.finish();
            Ok(BlobDigests {
                diff_id: digest,
                digest,
                size,
            })
        }
        Compression::Gzip => {
            let mut gz = crate::gzip::AdaptiveGz::hashing(out).map_err(map)?;
            write_tar(dir, clamp_mtime, &mut gz)?;
            let (_, d) = gz.finish_hashed().map_err(map)?;
            Ok(BlobDigests {
                diff_id: d.plain,
                digest: d.gz,
                size: d.gz_len,
            })
        }
    }
}

/// The newest mtime (seconds) of any entry under `dir`, `None` when it is empty: whether a
/// clamp would change the layer at all.
pub(crate) fn newest_mtime(dir: &Path) -> Result<Option<i64>> {
    let mut newest = None;
    for entry in sorted_entries(dir)? {
        let path = entry.path();
        let md = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        newest = newest.max(Some(md.mtime()));
        if md.is_dir() {
            newest = newest.max(newest_mtime(&path)?);
        }
    }
    Ok(newest)
}

fn write_tar(dir: &Path, clamp: Option<u64>, out: &mut dyn Write) -> Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    walk(dir, "", &mut b, &mut links, clamp)?;
    b.into_inner()
        .and_then(|w| w.flush())
        .map_err(io_err("finish layer tar of", dir))?;
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let mut entries = fs::read_dir(dir)
        .map_err(io_err("read dir", dir))?
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("read dir", dir))?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

fn walk(
    dir: &Path,
    prefix: &str,
    b: &mut tar::Builder<&mut dyn Write>,
    links: &mut HashMap<(u64, u64), String>,
    clamp: Option<u64>,
) -> Result<()> {
    for entry in sorted_entries(dir)? {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let rel = format!("{prefix}{name}");
        let md = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        let ft = md.file_type();
        let werr = io_err("add to layer", &path);

        if is_whiteout(&md) {
            let mut h = header(&md, clamp, tar::EntryType::Regular);
            h.set_size(0);
            h.set_mode(0);
            b.append_data(
                &mut h,
                format!("{prefix}{WHITEOUT_PREFIX}{name}"),
                io::empty(),
            )
            .map_err(werr)?;
            continue;
        }
        append_xattrs(b, &path).map_err(io_err("add xattrs of", &path))?;
        if ft.is_dir() {
            let mut h = header(&md, clamp, tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, format!("{rel}/"), io::empty())
                .map_err(werr)?;
            if is_opaque(&path) {
                let mut h = header(&md, clamp, tar::EntryType::Regular);
                h.set_size(0);
                h.set_mode(0);
                b.append_data(&mut h, format!("{rel}/{OPAQUE_MARKER}"), io::empty())
                    .map_err(io_err("add to layer", &path))?;
            }
            walk(&path, &format!("{rel}/"), b, links, clamp)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("read link", &path))?;
            let mut h = header(&md, clamp, tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &rel, &target).map_err(werr)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    let mut h = header(&md, clamp, tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, &rel, first).map_err(werr)?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), rel.clone());
            }
            let mut h = header(&md, clamp, tar::EntryType::Regular);
            h.set_size(md.len());
            let f = fs::File::open(&path).map_err(io_err("open", &path))?;
            b.append_data(&mut h, &rel, f).map_err(werr)?;
        } else {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            };
            let mut h = header(&md, clamp, kind);
            h.set_size(0);
            if kind != tar::EntryType::Fifo {
                let rdev = md.rdev();
                h.set_device_major(nix::sys::stat::major(rdev) as u32)
                    .map_err(io_err("add device", &path))?;
                h.set_device_minor(nix::sys::stat::minor(rdev) as u32)
                    .map_err(io_err("add device", &path))?;
            }
            b.append_data(&mut h, &rel, io::empty()).map_err(werr)?;
        }
    }
    Ok(())
}

fn header(md: &fs::Metadata, clamp: Option<u64>, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(u64::from(md.uid()));
    h.set_gid(u64::from(md.gid()));
    let mtime = md.mtime().max(0) as u64;
    h.set_mtime(clamp.map_or(mtime, |max| mtime.min(max)));
    h
}

fn append_xattrs(b: &mut tar::Builder<&mut dyn Write>, path: &Path) -> io::Result<()> {
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        // Filesystems without xattr support have nothing to keep.
        Err(_) => return Ok(()),
    };
    for n in names {
        let n = n.to_string_lossy().into_owned();
        if is_image_xattr(&n) {
            if let Some(v) = xattr::get(path, &n)? {
                kept.push((format!("SCHILY.xattr.{n}"), v));
            }
        }
    }
    if kept.is_empty() {
        return Ok(());
    }
    kept.sort();
    b.append_pax_extensions(kept.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn whiteouts_opaque_dirs_and_hardlinks() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::create_dir_all(d.join("etc/opq")).unwrap();
        fs::write(d.join("etc/b"), b"bee").unwrap();
        fs::hard_link(d.join("etc/b"), d.join("etc/a")).unwrap();
        std::os::unix::fs::symlink("b", d.join("etc/c")).unwrap();
        nix::sys::stat::mknod(
            &d.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        xattr::set(d.join("etc/opq"), "trusted.overlay.opaque", b"y").unwrap();
        xattr::set(d.join("etc/b"), "trusted.overlay.origin", b"x").unwrap();
        let mut out = Vec::new();
        let diff_id = write_layer_tar(d, Compression::Uncompressed, &mut out).unwrap();
        assert_eq!(diff_id, Digest::of(&out));
        let got = entries(&out);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/a",
                "etc/b",
                "etc/c",
                "etc/.wh.gone",
                "etc/opq/",
                "etc/opq/.wh..wh..opq"
            ]
        );
        // Hard links: the first name carries the data, the second links to it.
        assert_eq!(got[1].1, tar::EntryType::Regular);
        assert_eq!(got[2].1, tar::EntryType::Link);
        assert_eq!(got[3].1, tar::EntryType::Symlink);
        // trusted.* never leaks into the tar.
        assert!(!String::from_utf8_lossy(&out).contains("trusted.overlay"));

        // Same directory, same bytes; gzip's diff id is the uncompressed digest.
        let mut again = Vec::new();
        write_layer_tar(d, Compression::Uncompressed, &mut again).unwrap();
        assert_eq!(again, out);
        let mut gz = Vec::new();
        assert_eq!(
            write_layer_tar(d, Compression::Gzip, &mut gz).unwrap(),
            diff_id
        );

        // Clamped: every entry at most the epoch, older ones untouched.
        let mut clamped = Vec::new();
        write_layer_tar_clamped(d, Compression::Uncompressed, Some(1000), &mut clamped).unwrap();
        let mut a = tar::Archive::new(&clamped[..]);
        for e in a.entries().unwrap() {
            assert!(e.unwrap().header().mtime().unwrap() <= 1000);
        }
        assert!(newest_mtime(d).unwrap().unwrap() > 1000);
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(10);
        fs::File::open(d.join("etc/b"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut again = Vec::new();
        write_layer_tar_clamped(d, Compression::Uncompressed, Some(1000), &mut again).unwrap();
        let mut a = tar::Archive::new(&again[..]);
        let b_time = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("etc/a"))
            .map(|e| e.header().mtime().unwrap());
        assert_eq!(b_time, Some(10), "an older file keeps its time");
    }
}
