//! Paths inside the prepared rootfs, and the mountpoints the plugin has to create there.
//!
//! A mountpoint the rootfs lacks (`/proc` in a scratch image, `/etc/hosts`, `/run/secrets/x`)
//! must exist before something can be mounted on it, but it must not end up in the layer: the
//! layer holds what the process wrote, nothing else. [`Stubs`] creates the missing ones, records
//! them, and after the process has exited removes them again and restores the timestamps of the
//! directories they were created in (as BuildKit's `MountStubsCleaner` does).
//!
//! On overlayfs one trace remains that BuildKit leaves to its differ: creating `/etc/hosts` in
//! a directory that only exists in the lower layers copies that directory up, so the upper dir
//! (our layer) holds an unchanged `etc/`. When the rootfs is an overlay mount, [`Stubs`] finds
//! its upper dir and removes such copies when they are empty and otherwise unchanged. This
//! writes the upper dir under a mounted overlay, which overlayfs leaves undefined for further
//! use of *that mount* (it never crashes): the engine only unmounts and diffs it afterwards.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::Error;

/// Most symlinks followed while resolving one path, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;

/// The host path of `path` (absolute inside the container) in the rootfs at `root`, with
/// symlinks resolved as if `root` were `/`, so that no link in the image can point outside it.
/// Components that do not exist are appended as written.
pub fn secure_join(root: &Path, path: &str) -> PathBuf {
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = components(Path::new(path));
    pending.reverse();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && links < MAX_SYMLINKS => {
                links += 1;
                let Ok(target) = fs::read_link(&candidate) else {
                    resolved.push(part);
                    continue;
                };
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut more = components(&target);
                more.reverse();
                pending.extend(more);
            }
            _ => resolved.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(resolved);
    out
}

/// The normal and `..` components of `path` (root and `.` dropped).
fn components(path: &Path) -> Vec<std::ffi::OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Cleans `path` lexically into an absolute path with no `.`/`..` and no trailing `/`.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Whether `path` is `base` or below it (both cleaned, absolute).
pub fn is_within(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || (path.starts_with(base) && path.as_bytes().get(base.len()) == Some(&b'/'))
}

/// Creates the directory `path` (inside the container) and its missing parents, owned by the
/// plugin's user (root), mode 0755, as BuildKit does for a missing working directory. These
/// are part of the layer.
pub fn mkdir_all(root: &Path, path: &str) -> Result<(), Error> {
    let host = secure_join(root, path);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&host)
        .map_err(|e| Error::io("cannot create the working directory", host, e))
}

/// What to create at a missing mountpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StubKind {
    /// A directory (for directory binds, tmpfs, proc...).
    Dir,
    /// An empty file (for file binds: `/etc/hosts`, secrets).
    File,
}

/// A directory that held a stub, as it was before the first stub went into it.
struct Parent {
    atime: (i64, i64),
    mtime: (i64, i64),
    mode: u32,
    uid: u32,
    gid: u32,
    /// A stub was created directly in it (so its times changed and are restored).
    direct: bool,
    /// Its path in the overlay's upper dir, when it was not there before (a stub copied it up).
    copied_up: Option<PathBuf>,
}

/// Mountpoints created in the rootfs for one step; removed by [`Stubs::cleanup`].
pub struct Stubs {
    root: PathBuf,
    upper: Option<PathBuf>,
    /// Created paths, in creation order (parents before children).
    created: Vec<(PathBuf, StubKind)>,
    /// Existing directories stubs were created in, and their ancestors, by host path.
    parents: BTreeMap<PathBuf, Parent>,
}

impl Stubs {
    /// Stubs for the rootfs at `root` (canonical).
    pub fn new(root: &Path) -> Self {
        Stubs {
            root: root.to_path_buf(),
            upper: overlay_upper_dir(root),
            created: Vec::new(),
            parents: BTreeMap::new(),
        }
    }

    /// Makes sure `dest` (absolute inside the container) exists, creating it (as `kind`) and
    /// its missing parents, and returns its host path.
    pub fn ensure(&mut self, dest: &str, kind: StubKind) -> Result<PathBuf, Error> {
        let host = secure_join(&self.root, dest);
        if fs::symlink_metadata(&host).is_ok() {
            return Ok(host);
        }
        let rel = host.strip_prefix(&self.root).unwrap_or(Path::new(""));
        let parts: Vec<_> = rel.components().collect();
        let mut at = self.root.clone();
        for (i, part) in parts.iter().enumerate() {
            let next = at.join(part);
            if fs::symlink_metadata(&next).is_err() {
                self.note_parent(&at)?;
                let leaf_kind = if i + 1 == parts.len() {
                    kind
                } else {
                    StubKind::Dir
                };
                create(&next, leaf_kind)
                    .map_err(|e| Error::io("cannot create the mountpoint", &next, e))?;
                self.created.push((next.clone(), leaf_kind));
            }
            at = next;
        }
        Ok(host)
    }

    /// Records `dir` and its ancestors (up to the root) before a stub goes into it.
    fn note_parent(&mut self, dir: &Path) -> Result<(), Error> {
        if self.created.iter().any(|(p, _)| p == dir) {
            return Ok(());
        }
        if let Some(p) = self.parents.get_mut(dir) {
            p.direct = true;
            return Ok(());
        }
        let mut at = Some(dir);
        while let Some(d) = at {
            if self.parents.contains_key(d) || !d.starts_with(&self.root) {
                break;
            }
            let m = fs::metadata(d).map_err(|e| Error::io("cannot stat", d, e))?;
            let copied_up = match (&self.upper, d.strip_prefix(&self.root)) {
                (Some(upper), Ok(rel)) if !rel.as_os_str().is_empty() => {
                    let u = upper.join(rel);
                    fs::symlink_metadata(&u).is_err().then_some(u)
                }
                _ => None,
            };
            self.parents.insert(
                d.to_path_buf(),
                Parent {
                    atime: (m.atime(), m.atime_nsec()),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    direct: d == dir,
                    copied_up,
                },
            );
            at = d.parent();
        }
        Ok(())
    }

    /// Removes the stubs (those still empty: a directory the process filled is its output) and
    /// restores their parents, returning what could not be cleaned.
    pub fn cleanup(self) -> Vec<String> {
        let mut problems = Vec::new();
        for (path, kind) in self.created.iter().rev() {
            let r = match kind {
                StubKind::Dir => fs::remove_dir(path),
                StubKind::File => match fs::symlink_metadata(path) {
                    Ok(m) if m.len() == 0 => fs::remove_file(path),
                    _ => Ok(()),
                },
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // ENOTEMPTY: the process wrote below a directory we created; that is its output.
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
                Err(e) => problems.push(format!("cannot remove {}: {e}", path.display())),
            }
        }
        // Deepest first, so that emptied copies can go from the bottom up.
        for (dir, p) in self.parents.iter().rev() {
            // Only where a stub went directly: other ancestors' times did not change (a
            // copy-up restores its parent's times), and the process may have changed them.
            if p.direct {
                if let Err(e) = set_times(dir, p.atime, p.mtime) {
                    if e.kind() != io::ErrorKind::NotFound {
                        problems.push(format!(
                            "cannot restore the times of {}: {e}",
                            dir.display()
                        ));
                    }
                }
            }
            if let Some(copy) = &p.copied_up {
                if is_pristine_copy(copy, p) {
                    // Only the copy-up our stub caused: drop it so the layer does not list it.
                    let _ignored = fs::remove_dir(copy);
                }
            }
        }
        problems
    }
}

fn create(path: &Path, kind: StubKind) -> io::Result<()> {
    match kind {
        StubKind::Dir => fs::DirBuilder::new().mode(0o755).create(path),
        StubKind::File => fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map(drop),
    }
}

fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let times = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: `c` is NUL-terminated and `times` holds the two timespecs utimensat reads.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the upper-dir copy `copy` of a lower directory is empty and carries nothing the
/// process could have changed (mode, owner, times, non-overlay xattrs).
fn is_pristine_copy(copy: &Path, before: &Parent) -> bool {
    let Ok(m) = fs::symlink_metadata(copy) else {
        return false;
    };
    let empty = fs::read_dir(copy)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    m.is_dir()
        && empty
        && m.mode() == before.mode
        && m.uid() == before.uid
        && m.gid() == before.gid
        && (m.mtime(), m.mtime_nsec()) == before.mtime
        && only_overlay_xattrs(copy)
}

fn only_overlay_xattrs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = vec![0u8; 4096];
    // SAFETY: `c` is NUL-terminated; `buf` is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let Ok(n) = usize::try_from(n) else {
        return false;
    };
    buf.truncate(n);
    buf.split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .all(|name| {
            (name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay."))
                && name != b"trusted.overlay.opaque"
                && name != b"user.overlay.opaque"
        })
}

/// The upper dir of the overlay mounted at `root`, from `/proc/self/mountinfo`.
fn overlay_upper_dir(root: &Path) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let root = root.as_os_str().as_bytes();
    // The last matching line is the mount on top.
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = unescape(fields.get(4)?);
        if mount_point != root {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        if *fields.get(sep + 1)? != "overlay" {
            return None;
        }
        let options = fields.get(sep + 3)?;
        options.split(',').find_map(|o| {
            o.strip_prefix("upperdir=")
                .map(|u| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(u))))
        })
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn secure_join_keeps_links_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("real/etc")).unwrap();
        symlink("/real/etc", root.join("etc")).unwrap();
        symlink("../../../../outside", root.join("real/escape")).unwrap();
        assert_eq!(secure_join(root, "/etc/hosts"), root.join("real/etc/hosts"));
        assert_eq!(secure_join(root, "/real/escape/x"), root.join("outside/x"));
        assert_eq!(secure_join(root, "/../a/./b/"), root.join("a/b"));
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(secure_join(root, "/loop"), root.join("loop"));
    }

    #[test]
    fn paths() {
        assert_eq!(clean("a/../../b/./c/"), "/b/c");
        assert_eq!(clean(""), "/");
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/x", "/"));
        assert_eq!(unescape(r"/a\040b\134c"), b"/a b\\c");
    }

    #[test]
    fn stubs_are_removed_and_times_restored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("etc")).unwrap();
        let before = fs::metadata(root.join("etc")).unwrap();
        let mut stubs = Stubs::new(root);
        stubs.ensure("/etc/hosts", StubKind::File).unwrap();
        stubs.ensure("/run/secrets/a", StubKind::File).unwrap();
        stubs.ensure("/cache", StubKind::Dir).unwrap();
        assert!(root.join("run/secrets/a").is_file());
        fs::write(root.join("cache/kept"), "x").unwrap();
        assert!(stubs.cleanup().is_empty());
        let after = fs::metadata(root.join("etc")).unwrap();
        assert_eq!(
            (before.mtime(), before.mtime_nsec()),
            (after.mtime(), after.mtime_nsec())
        );
        let mut left: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, vec!["cache", "etc"]);
        assert!(fs::read_dir(root.join("etc")).unwrap().next().is_none());
    }
}
