//! ADD's archive extraction: a source file that is a tar stream (plain, gzip, bzip2, xz or zstd,
//! recognized by its content, never by its name, as BuildKit does) is extracted into the
//! destination directory with `tar -x` semantics (entries merge into what is there, the archive
//! wins file by file).
//!
//! Hostile archives: every entry is placed as if the destination directory were a chroot
//! (BuildKit extracts with moby's chrootarchive). A name that climbs out with `..` is an error;
//! absolute names are taken relative to the destination; symlinks met on the way to an entry's
//! parent resolve inside the destination ([`crate::rootpath::resolve`]); an entry's own path is
//! never followed (whatever is there is replaced); hard links may only point at entries inside.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fchmod, futimens, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use kiln_snapshot::tar_limits::{check_entry, shown_name, HeaderGuard};

use super::{create_dirs, FileOpError, Result};
use crate::rootpath::{resolve_in, InRoot};

/// Compression of a stream, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn decompressed<'a>(file: impl BufRead + 'a, c: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(file)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
    })
}

/// Whether `block` is a tar header: not all zeros, and its checksum (the byte sum with the
/// checksum field read as spaces, unsigned or signed as old tars wrote it) matches.
fn is_tar_header(block: &[u8; 512]) -> bool {
    if block.iter().all(|b| *b == 0) {
        return false;
    }
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .map(|b| *b as char)
        .skip_while(|c| *c == ' ')
        .take_while(|c| c.is_digit(8))
        .collect();
    let Ok(stored) = u64::from_str_radix(&digits, 8) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// The decompressed tar stream of `src` when it is a tar archive; `None` for any other file
/// (copied as is by the caller), including a compressed file that does not hold a tar.
pub(super) fn open_archive(src: &Path) -> Result<Option<Box<dyn Read>>> {
    let shown = src.display().to_string();
    tar_stream(|| fs::File::open(src).map(BufReader::new)).map_err(super::ioe("open", &shown))
}

/// The decompressed stream of what `open` reads when it holds a tar archive. `open` is called
/// once to sniff the compression, once to check that a tar header follows, once for the stream.
fn tar_stream<'a, R: BufRead + 'a>(
    open: impl Fn() -> io::Result<R>,
) -> io::Result<Option<Box<dyn Read + 'a>>> {
    let mut head = [0u8; 6];
    let n = read_full(&mut open()?, &mut head)?;
    let compression = detect(&head[..n]);
    let probe = open()
        .and_then(|f| decompressed(f, compression))
        .and_then(|mut r| {
            let mut block = [0u8; 512];
            let n = read_full(&mut r, &mut block)?;
            Ok(n == 512 && is_tar_header(&block))
        });
    if !matches!(probe, Ok(true)) {
        return Ok(None);
    }
    decompressed(open()?, compression).map(Some)
}

/// ADD's archive extraction of `archive` (plain, gzip, bzip2, xz or zstd, as ADD detects it)
/// into the directory `dest`, with every check a build applies; `Ok(false)` when the bytes are
/// not a tar archive (ADD copies such a file as it is).
///
/// The entry point for fuzzing: no store, no build, no registry. The caller makes `dest` (a
/// temporary directory) and removes it.
pub fn extract_archive_bytes(archive: &[u8], dest: &Path) -> Result<bool> {
    let shown = "archive";
    let Some(stream) = tar_stream(|| Ok(archive)).map_err(super::ioe("read", shown))? else {
        return Ok(false);
    };
    extract(stream, dest, None, shown)?;
    Ok(true)
}

/// Extracts the file `src` into the directory `dest` (named `shown` in errors) when it is a tar
/// archive, with ADD's checks; `Ok(false)` when it is not one. Remote build contexts use it.
pub(crate) fn extract_archive_file(src: &Path, dest: &Path, shown: &str) -> Result<bool> {
    let Some(stream) = tar_stream(|| fs::File::open(src).map(BufReader::new))
        .map_err(super::ioe("read", shown))?
    else {
        return Ok(false);
    };
    extract(stream, dest, None, shown)?;
    Ok(true)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An archive entry that cannot be extracted safely or at all.
fn bad(archive: &str, entry: &str, why: impl Into<String>) -> FileOpError {
    FileOpError::Archive {
        archive: archive.to_owned(),
        entry: entry.to_owned(),
        reason: why.into(),
    }
}

/// The normal components of an archive name, `.` dropped, `..` applied, a leading `/` ignored;
/// `None` when `..` climbs above the top.
fn clean(name: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(parts)
}

/// Where entry `parts` goes under `dest`: its parent resolved inside `dest` by the kernel (and
/// held open), its own name never followed.
fn place(dest: &Path, parts: &[String]) -> io::Result<InRoot> {
    if parts.is_empty() {
        return Err(io::Error::other("empty entry name"));
    }
    resolve_in(dest, &parts.join("/"), false)
}

/// Removes whatever is at `p` (without following it), unless both it and the new entry are
/// directories (they merge).
fn clear(p: &Path, new_is_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() && new_is_dir => Ok(()),
        Ok(md) if md.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Extracts the tar stream `reader` (named `archive` in errors) into the directory `dest`.
/// `owner` replaces the entries' own uid/gid (`ADD --chown`).
pub(super) fn extract(
    reader: impl Read,
    dest: &Path,
    owner: Option<(u32, u32)>,
    archive: &str,
) -> Result<()> {
    create_dirs(dest, 0o755, owner, archive)?;
    // Header fields are bounded as for layer import (long names, PAX records, xattrs, sparse
    // holes): an archive is as untrusted as a pulled layer.
    let (reader, guard) = HeaderGuard::new(reader);
    let mut ar = tar::Archive::new(reader);
    let entries = guard
        .entries(&mut ar)
        .map_err(|e| bad(archive, "", format!("not a readable tar archive: {e}")))?;
    // Directory modes and times are applied last, deepest first, so that a read-only directory
    // does not stop its own entries from being written and writing them does not change its
    // time.
    let mut dirs: Vec<(Vec<String>, u32, u64)> = Vec::new();
    let mut previous = String::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            let after = if previous.is_empty() {
                String::new()
            } else {
                format!(" after entry {previous:?}")
            };
            bad(archive, "", format!("corrupt archive{after}: {e}"))
        })?;
        let shown = shown_name(&entry.path_bytes());
        check_entry(&mut entry).map_err(|why| bad(archive, &shown, why))?;
        previous.clone_from(&shown);
        let name_path = entry
            .path()
            .map_err(|e| bad(archive, &shown, format!("bad entry name: {e}")))?
            .into_owned();
        let parts = clean(&name_path).ok_or_else(|| {
            bad(
                archive,
                &shown,
                "its name climbs out of the destination with \"..\"",
            )
        })?;
        if parts.is_empty() {
            continue; // `./` itself: the destination exists already.
        }
        let io_err = |op: &str, e: io::Error| bad(archive, &shown, format!("{op}: {e}"));
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        let ids = owner.or_else(|| Some((header.uid().ok()? as u32, header.gid().ok()? as u32)));
        let target = place(dest, &parts).map_err(|e| io_err("resolve", e))?;
        if let Some(parent) = target.parent() {
            create_dirs(parent, 0o755, owner, &shown)?;
        }
        clear(&target, kind.is_dir()).map_err(|e| io_err("replace", e))?;
        match kind {
            tar::EntryType::Directory => {
                if !target.is_dir() {
                    fs::create_dir(&target).map_err(|e| io_err("mkdir", e))?;
                }
                chown(&target, ids, owner.is_some()).map_err(|e| io_err("chown", e))?;
                dirs.push((parts, mode, mtime));
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| io_err("create", e))?;
                let written = io::copy(&mut entry, &mut f).map_err(|e| io_err("write", e))?;
                if written != entry.size() {
                    return Err(bad(
                        archive,
                        &shown,
                        format!(
                            "its header says {} bytes but the archive ends after {written}",
                            entry.size()
                        ),
                    ));
                }
                drop(f);
                chown(&target, ids, owner.is_some()).map_err(|e| io_err("chown", e))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|e| io_err("chmod", e))?;
            }
            tar::EntryType::Symlink => {
                let to = entry
                    .link_name()
                    .map_err(|e| io_err("link name", e))?
                    .ok_or_else(|| bad(archive, &shown, "symlink without a target"))?;
                // The target is stored as written: it is only ever resolved inside a root.
                std::os::unix::fs::symlink(&to, &target).map_err(|e| io_err("symlink", e))?;
                chown(&target, ids, owner.is_some()).map_err(|e| io_err("chown", e))?;
            }
            tar::EntryType::Link => {
                let to = entry
                    .link_name()
                    .map_err(|e| io_err("link name", e))?
                    .ok_or_else(|| bad(archive, &shown, "hard link without a target"))?;
                let to_parts = clean(&to).filter(|p| !p.is_empty()).ok_or_else(|| {
                    bad(
                        archive,
                        &shown,
                        format!("hard link to {} points outside the archive", to.display()),
                    )
                })?;
                let existing = place(dest, &to_parts).map_err(|e| io_err("resolve", e))?;
                match fs::symlink_metadata(&existing) {
                    Ok(md) if !md.is_dir() => {}
                    _ => {
                        return Err(bad(
                            archive,
                            &shown,
                            format!(
                                "hard link to {} which is not an earlier file of the archive",
                                to.display()
                            ),
                        ))
                    }
                }
                fs::hard_link(&existing, &target).map_err(|e| io_err("link", e))?;
                continue; // A hard link shares its target's metadata.
            }
            // In a user namespace (rootless kiln) the kernel refuses device nodes: skipped, as
            // moby's pkg/archive does there.
            tar::EntryType::Char | tar::EntryType::Block if kiln_snapshot::in_user_namespace() => {
                continue
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (flag, dev) = match kind {
                    tar::EntryType::Char => (SFlag::S_IFCHR, device(header)),
                    tar::EntryType::Block => (SFlag::S_IFBLK, device(header)),
                    _ => (SFlag::S_IFIFO, 0),
                };
                mknod(target.path(), flag, Mode::from_bits_truncate(mode), dev)
                    .map_err(|e| io_err("mknod", e.into()))?;
                chown(&target, ids, owner.is_some()).map_err(|e| io_err("chown", e))?;
            }
            // PAX and GNU long-name records are consumed by the reader; anything else (global
            // headers, unknown types) carries no file.
            _ => continue,
        }
        set_time(&target, mtime);
    }
    for (parts, mode, mtime) in dirs.iter().rev() {
        let shown = parts.join("/");
        let chmod_err = |e: io::Error| bad(archive, &shown, format!("chmod: {e}"));
        let path = place(dest, parts).map_err(chmod_err)?;
        // Opened without following: a later entry may have replaced the directory with a
        // symlink, whose target (anywhere on the host) must not get this mode.
        let dir = match nix::fcntl::open(
            path.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::ENOENT) => continue,
            Err(e) => return Err(chmod_err(e.into())),
        };
        fchmod(&dir, Mode::from_bits_truncate(*mode)).map_err(|e| chmod_err(e.into()))?;
        let t = TimeSpec::new(i64::try_from(*mtime).unwrap_or(i64::MAX), 0);
        let _ = futimens(&dir, &t, &t);
    }
    Ok(())
}

fn device(h: &tar::Header) -> nix::libc::dev_t {
    let major = h.device_major().ok().flatten().unwrap_or(0);
    let minor = h.device_minor().ok().flatten().unwrap_or(0);
    nix::sys::stat::makedev(u64::from(major), u64::from(minor))
}

/// Gives `p` the owner `ids`. Ids from the archive itself are best effort (an unprivileged
/// build keeps its own); an explicit `--chown` must succeed.
fn chown(p: &Path, ids: Option<(u32, u32)>, explicit: bool) -> io::Result<()> {
    let Some((u, g)) = ids else { return Ok(()) };
    match std::os::unix::fs::lchown(p, Some(u), Some(g)) {
        Err(e) if explicit => Err(e),
        _ => Ok(()),
    }
}

/// Sets the modification (and access) time of `p` itself, never of a symlink's target.
fn set_time(p: &Path, mtime: u64) {
    let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // Set the raw name so that hostile names (`..`, absolute) survive the builder's checks.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        h
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let mut h = header(path, *kind, 0);
                    h.set_link_name(data).unwrap();
                    h.set_cksum();
                    h
                }
                _ => header(path, *kind, data.len() as u64),
            };
            if kind.is_dir() {
                h.set_mode(0o755);
                h.set_cksum();
            }
            let body: &[u8] = if matches!(kind, tar::EntryType::Regular) {
                data.as_bytes()
            } else {
                &[]
            };
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn extract_bytes(bytes: &[u8], dest: &Path) -> Result<()> {
        let src = dest.parent().unwrap().join("archive.bin");
        fs::write(&src, bytes).unwrap();
        let r = open_archive(&src)?.expect("an archive");
        let from_file = extract(r, dest, None, "archive.bin");
        // The fuzzing entry point agrees with the build's path.
        let dest2 = dest.with_extension("bytes");
        let from_bytes = extract_archive_bytes(bytes, &dest2);
        assert_eq!(
            from_file
                .as_ref()
                .map_err(|e| e.to_string().replace("archive.bin", "archive")),
            from_bytes.as_ref().map(|_| &()).map_err(|e| e.to_string())
        );
        from_file
    }

    #[test]
    fn detects_compressions_by_content() {
        let t = tempfile::tempdir().unwrap();
        let plain = tar_of(&[("a.txt", tar::EntryType::Regular, "hello")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&plain).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&plain).unwrap();
        let zst = zstd::stream::encode_all(&plain[..], 1).unwrap();
        let cases = [
            ("plain.zip", plain.clone()),
            ("gz.txt", gz.finish().unwrap()),
            ("bz", bz.finish().unwrap()),
            ("xz", xz.finish().unwrap()),
            ("zst", zst),
        ];
        for (name, bytes) in cases {
            let src = t.path().join(name);
            fs::write(&src, bytes).unwrap();
            let r = open_archive(&src)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}"));
            let dest = t.path().join(format!("out-{name}"));
            extract(r, &dest, None, name).unwrap();
            assert_eq!(fs::read_to_string(dest.join("a.txt")).unwrap(), "hello");
            let md = fs::metadata(dest.join("a.txt")).unwrap();
            assert_eq!(md.mtime(), 1_600_000_000);
        }
        // Not archives: text, gzip of text, an empty tar.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"just text").unwrap();
        for (name, bytes) in [
            ("text.tar", b"hello world".to_vec()),
            ("text.gz", gz.finish().unwrap()),
            ("empty.tar", vec![0u8; 1024]),
        ] {
            let src = t.path().join(name);
            fs::write(&src, bytes).unwrap();
            assert!(open_archive(&src).unwrap().is_none(), "{name}");
        }
    }

    #[test]
    fn dotdot_escape_is_rejected() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        let bytes = tar_of(&[("a/../../evil", tar::EntryType::Regular, "x")]);
        let err = extract_bytes(&bytes, &dest).unwrap_err().to_string();
        assert!(err.contains("climbs out"), "{err}");
        assert!(!t.path().join("evil").exists());
    }

    #[test]
    fn absolute_names_land_inside() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        let bytes = tar_of(&[("/etc/evil", tar::EntryType::Regular, "x")]);
        extract_bytes(&bytes, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("etc/evil")).unwrap(), "x");
    }

    #[test]
    fn symlink_entries_are_never_followed_out() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        let outside = t.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("victim"), "safe").unwrap();
        let out = outside.display().to_string();
        let victim = outside.join("victim").display().to_string();
        let bytes = tar_of(&[
            // A symlink to a host directory, then a file "through" it.
            ("dir", tar::EntryType::Symlink, out.as_str()),
            ("dir/pwned", tar::EntryType::Regular, "x"),
            // A symlink to a host file, then a file with the symlink's own name.
            ("file", tar::EntryType::Symlink, victim.as_str()),
            ("file", tar::EntryType::Regular, "replaced"),
            // Relative climbing symlink.
            ("up", tar::EntryType::Symlink, "../../.."),
            ("up/escaped", tar::EntryType::Regular, "x"),
        ]);
        extract_bytes(&bytes, &dest).unwrap();
        assert!(!outside.join("pwned").exists());
        assert_eq!(fs::read_to_string(outside.join("victim")).unwrap(), "safe");
        // The symlinked parent resolved inside the destination, as in a chroot.
        let inside = dest.join(out.trim_start_matches('/')).join("pwned");
        assert_eq!(fs::read_to_string(inside).unwrap(), "x");
        assert_eq!(fs::read_to_string(dest.join("file")).unwrap(), "replaced");
        assert!(!fs::symlink_metadata(dest.join("file"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(dest.join("escaped")).unwrap(), "x");
        assert!(!t.path().join("escaped").exists());
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_does_not_pass_its_mode_to_the_host() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        let victim = t.path().join("victim");
        fs::write(&victim, "host").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        let target = victim.display().to_string();
        let mut bytes = tar_of(&[("d/", tar::EntryType::Directory, "")]);
        bytes.truncate(bytes.len() - 1024);
        let mut h = tar::Header::from_byte_slice(&bytes[..512]).clone();
        h.set_mode(0o777);
        h.set_cksum();
        bytes[..512].copy_from_slice(h.as_bytes());
        bytes.extend(tar_of(&[("d", tar::EntryType::Symlink, target.as_str())]));
        extract_bytes(&bytes, &dest).unwrap();
        let mode = fs::metadata(&victim).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600, "the host file's mode changed");
        assert!(fs::symlink_metadata(dest.join("d"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn hardlinks_only_inside() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        let ok = tar_of(&[
            ("a", tar::EntryType::Regular, "data"),
            ("b", tar::EntryType::Link, "a"),
        ]);
        extract_bytes(&ok, &dest).unwrap();
        assert_eq!(
            fs::metadata(dest.join("a")).unwrap().ino(),
            fs::metadata(dest.join("b")).unwrap().ino()
        );
        let secret = t.path().join("secret");
        fs::write(&secret, "s").unwrap();
        let dest2 = t.path().join("dest2");
        let hostile = tar_of(&[("x", tar::EntryType::Link, "../secret")]);
        let err = extract_bytes(&hostile, &dest2).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
        let abs = secret.display().to_string();
        let hostile = tar_of(&[("y", tar::EntryType::Link, abs.as_str())]);
        let err = extract_bytes(&hostile, &dest2).unwrap_err().to_string();
        assert!(err.contains("not an earlier file"), "{err}");
    }

    #[test]
    fn merges_into_existing_and_keeps_dir_modes() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        fs::create_dir_all(dest.join("d")).unwrap();
        fs::write(dest.join("d/old"), "old").unwrap();
        let bytes = tar_of(&[
            ("d/", tar::EntryType::Directory, ""),
            ("d/new", tar::EntryType::Regular, "new"),
        ]);
        extract_bytes(&bytes, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("d/old")).unwrap(), "old");
        assert_eq!(fs::read_to_string(dest.join("d/new")).unwrap(), "new");
        let md = fs::metadata(dest.join("d")).unwrap();
        assert_eq!((md.mode() & 0o7777, md.mtime()), (0o755, 1_600_000_000));
    }

    #[test]
    fn copy_action_unpacks_archives_only() {
        use kiln_graph::{CopyAction, FileAction};
        let t = tempfile::tempdir().unwrap();
        let (src, root) = (t.path().join("src"), t.path().join("root"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&root).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_of(&[("in/a.txt", tar::EntryType::Regular, "a")]))
            .unwrap();
        fs::write(src.join("app.bin"), gz.finish().unwrap()).unwrap();
        fs::write(src.join("notes.tar.gz"), "not really").unwrap();
        let action = |s: &str, d: &str, unpack: bool| {
            let mut c = CopyAction::new(Some(0), s, d);
            c.unpack = unpack;
            FileAction::Copy(c)
        };
        let actions = [
            action("/app.bin", "/x", true),
            action("/notes.tar.gz", "/y/", true),
            action("/app.bin", "/z/", false),
        ];
        super::super::apply(&root, &actions, &[src]).unwrap();
        assert_eq!(fs::read_to_string(root.join("x/in/a.txt")).unwrap(), "a");
        assert_eq!(
            fs::read_to_string(root.join("y/notes.tar.gz")).unwrap(),
            "not really"
        );
        assert!(root.join("z/app.bin").is_file());
    }

    /// A PAX header holding `records` (`<len> <key>=<value>\n`), then a file `name`.
    fn tar_with_pax(records: &[(&str, &[u8])], name: &str, kind: tar::EntryType) -> Vec<u8> {
        let mut pax = Vec::new();
        for (k, v) in records {
            let body = k.len() + v.len() + 3;
            let mut len = body + 1;
            while len.to_string().len() + body != len {
                len = len.to_string().len() + body;
            }
            pax.extend_from_slice(format!("{len} {k}=").as_bytes());
            pax.extend_from_slice(v);
            pax.push(b'\n');
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeaders/x").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(pax.len() as u64);
        h.set_cksum();
        b.append(&h, &pax[..]).unwrap();
        let data: &[u8] = if kind.is_file() { b"x" } else { b"" };
        b.append(&header(name, kind, data.len() as u64), data)
            .unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn header_fields_beyond_linux_limits_are_refused_writing_nothing() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        use tar::EntryType::{Regular, Symlink};
        let refused = |bytes: &[u8], entry: &str, why: &str| {
            let err = extract_bytes(bytes, &dest).unwrap_err().to_string();
            assert!(err.contains("archive.bin"), "{err}");
            assert!(err.contains(&format!("entry {entry:?}")), "{err}");
            assert!(err.contains(why), "{why:?}: {err}");
        };
        // A PAX path of 4,200 bytes, every component short.
        let long = format!("{}f", "a/".repeat(2100));
        let shown = format!("{}… (4201 bytes)", &long[..200]);
        refused(
            &tar_with_pax(&[("path", long.as_bytes())], "f", Regular),
            &shown,
            "PATH_MAX",
        );
        // A 300-byte component.
        let name = "n".repeat(300);
        let shown = format!("{}… (300 bytes)", &name[..200]);
        refused(
            &tar_with_pax(&[("path", name.as_bytes())], "f", Regular),
            &shown,
            "NAME_MAX",
        );
        // A symlink target longer than PATH_MAX.
        let target = "t/".repeat(2500);
        let bytes = tar_with_pax(&[("linkpath", target.as_bytes())], "lnk", Symlink);
        refused(&bytes, "lnk", "link target is 5000 bytes");
        // 2 MiB of PAX records before one file.
        let comment = vec![b'c'; 2 << 20];
        let err = extract_bytes(&tar_with_pax(&[("comment", &comment)], "f", Regular), &dest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceed 1048576 bytes"), "{err}");
        // A file whose data stops short of its size.
        let mut bytes = header("short", tar::EntryType::Regular, 10_000)
            .as_bytes()
            .to_vec();
        bytes.extend(vec![b'x'; 600]);
        refused(
            &bytes,
            "short",
            "says 10000 bytes but the archive ends after 600",
        );
        // Nothing of the refused entries was written, in or out of the destination.
        let written: Vec<_> = fs::read_dir(&dest)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(
            written.iter().all(|n| n != "a" && n != "lnk"),
            "{written:?}"
        );
        assert_eq!(
            fs::read_dir(t.path()).unwrap().count(),
            3,
            "only dest, dest.bytes and archive.bin"
        );
    }

    #[test]
    fn truncated_archive_fails_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        let mut bytes = tar_of(&[("big", tar::EntryType::Regular, &"x".repeat(4096))]);
        bytes.truncate(1024);
        let err = extract_bytes(&bytes, &dest).unwrap_err().to_string();
        assert!(err.contains("archive.bin"), "{err}");
    }
}
