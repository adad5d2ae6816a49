//! Resolving a path inside a root directory the way the kernel would inside a chroot: `..` stops
//! at the root and symlinks (absolute or relative) are followed relative to the root. Every file
//! operation on a build filesystem goes through this, so a symlink in an image or an archive can
//! never make kiln touch a host path.
//!
//! The kernel does the resolving: every directory on the way is opened with
//! `openat2(RESOLVE_IN_ROOT)`, which walks symlinks and `..` inside the root atomically, so a
//! symlink swapped in while kiln looks cannot lead out (a walk in user space, `lstat` then
//! `readlink` then the next component, can be raced). The result keeps the directory open and
//! names the target through it (`/proc/self/fd/<n>/<rest>`): later calls on that path reach the
//! same directory even if its parents are replaced by symlinks meanwhile. Only a final symlink
//! that is followed (`follow_last`) is read in user space, one `readlinkat` in the pinned
//! directory, and its target is resolved by the kernel again.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// The kernel's own limit on symlinks followed in one resolution (`MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// A path resolved inside a root: the deepest existing directory on the way, held open, and the
/// components below it (missing directories, then the final name). Use [`InRoot::path`] while
/// this value lives.
#[derive(Debug)]
pub struct InRoot {
    dir: OwnedFd,
    rest: PathBuf,
    path: PathBuf,
}

impl InRoot {
    fn new(dir: OwnedFd, rest: PathBuf) -> InRoot {
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(&rest);
        InRoot { dir, rest, path }
    }

    /// A path that reaches the resolved location through the open directory; valid while
    /// `self` lives, in this process only.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last component below the open directory: the name of what was resolved, unless that
    /// is the root or a path ending in `..`.
    pub fn name(&self) -> Option<&std::ffi::OsStr> {
        self.rest.file_name()
    }

    /// The resolved location as an ordinary host path (for another process, or a mount):
    /// where the kernel found the directory, plus what lies below it.
    pub fn real_path(&self) -> io::Result<PathBuf> {
        let dir = std::fs::read_link(format!("/proc/self/fd/{}", self.dir.as_raw_fd()))?;
        Ok(dir.join(&self.rest))
    }
}

impl std::ops::Deref for InRoot {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for InRoot {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// Resolves `path` (absolute or relative to `/`) inside `root`, returning an ordinary host path
/// (see [`resolve_in`] for the rules). The path is exact when returned; prefer [`resolve_in`]
/// where the result is used in this process, since it stays pinned.
pub fn resolve(root: &Path, path: &str, follow_last: bool) -> io::Result<PathBuf> {
    resolve_in(root, path, follow_last)?.real_path()
}

/// Resolves `path` (absolute or relative to `/`) inside `root`. The final component is followed
/// when it is a symlink and `follow_last` is set. Missing components are fine: the result is
/// where they would be created.
pub fn resolve_in(root: &Path, path: &str, follow_last: bool) -> io::Result<InRoot> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    let mut comps = components(path);
    let mut links = 0;
    loop {
        let Some((name, parent)) = comps.split_last() else {
            return Ok(InRoot::new(root_fd, PathBuf::new()));
        };
        if name == ".." {
            // Names a directory: the kernel resolves all of it.
            let (dir, missing) = open_deepest(&root_fd, &comps, &mut links)?;
            return Ok(InRoot::new(dir, missing));
        }
        let (dir, missing) = open_deepest(&root_fd, parent, &mut links)?;
        if !missing.as_os_str().is_empty() || !follow_last {
            return Ok(InRoot::new(dir, missing.join(name)));
        }
        let target = match readlinkat(&dir, name.as_str()) {
            Ok(t) => t,
            // Not a symlink, or not there: the name itself is the answer.
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(InRoot::new(dir, name.into())),
            Err(e) => return Err(sys_err(e)),
        };
        links += 1;
        if links > MAX_LINKS {
            return Err(sys_err(Errno::ELOOP));
        }
        let target = target.to_string_lossy().into_owned();
        // A relative target continues from the link's own directory, as the link was reached:
        // the kernel walks that prefix again (inside the root) before the target.
        let mut next = if target.starts_with('/') {
            Vec::new()
        } else {
            parent.to_vec()
        };
        next.extend(components(&target));
        comps = next;
    }
}

/// Opens the directory `comps` leads to inside the root, or the deepest existing one on the
/// way and the (lexically cleaned) components that do not exist yet. A dangling symlink on the
/// way is followed to where its target would be created (as `mkdir -p` in a chroot would see
/// it, and as BuildKit's `RootPath` does); `links` counts the symlinks followed so.
fn open_deepest(
    root: &OwnedFd,
    comps: &[String],
    links: &mut usize,
) -> io::Result<(OwnedFd, PathBuf)> {
    match open_dir(root, &comps.join("/")) {
        Ok(fd) => return Ok((fd, PathBuf::new())),
        Err(Errno::ENOENT | Errno::ENOTDIR) => {}
        Err(e) => return Err(sys_err(e)),
    }
    // Something is missing: find where, one more component at a time.
    let mut todo: Vec<String> = comps.iter().rev().cloned().collect();
    let mut dir = root.try_clone()?;
    let mut prefix: Vec<String> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    while let Some(c) = todo.pop() {
        if !missing.is_empty() {
            if c == ".." {
                missing.pop();
            } else {
                missing.push(c);
            }
            continue;
        }
        prefix.push(c);
        match open_dir(root, &prefix.join("/")) {
            Ok(fd) => {
                dir = fd;
                continue;
            }
            Err(Errno::ENOENT | Errno::ENOTDIR) => {}
            Err(e) => return Err(sys_err(e)),
        }
        let c = prefix.pop().unwrap_or_default();
        match readlinkat(&dir, c.as_str()) {
            Ok(target) if c != ".." => {
                *links += 1;
                if *links > MAX_LINKS {
                    return Err(sys_err(Errno::ELOOP));
                }
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    prefix.clear();
                    dir = root.try_clone()?;
                }
                todo.extend(components(&target).into_iter().rev());
            }
            // What follows a missing name or a file is where it would be created; calls on a
            // path through a file then fail as they should.
            _ => missing.push(c),
        }
    }
    Ok((dir, missing.iter().collect()))
}

/// `openat2(root, path, O_PATH|O_DIRECTORY, RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS)`, retried when
/// the kernel asks (`EAGAIN`: a rename raced the walk of `..`).
fn open_dir(root: &OwnedFd, path: &str) -> Result<OwnedFd, Errno> {
    let path = if path.is_empty() { "." } else { path };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut tries = 0;
    loop {
        match openat2(root, path, how) {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            other => return other,
        }
    }
}

fn sys_err(e: Errno) -> io::Error {
    match e {
        // No fallback: resolving in user space is what this module exists to avoid.
        Errno::ENOSYS => io::Error::other(
            "openat2 is not available: kiln needs Linux 5.6 or later to resolve paths inside a \
             build filesystem safely",
        ),
        Errno::ELOOP => io::Error::other("too many levels of symbolic links"),
        e => e.into(),
    }
}

fn components(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dotdot_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let r = &t.path().canonicalize().unwrap();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        symlink("/etc", r.join("a/abs")).unwrap();
        symlink("../../..", r.join("a/b/up")).unwrap();
        symlink("b", r.join("a/rel")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        symlink("/etc/passwd", r.join("passwd")).unwrap();
        assert_eq!(
            resolve(r, "/a/abs/passwd", true).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(resolve(r, "a/b/up/x", true).unwrap(), r.join("x"));
        assert_eq!(resolve(r, "../../../etc", true).unwrap(), r.join("etc"));
        assert_eq!(resolve(r, "/a/rel/f", true).unwrap(), r.join("a/b/f"));
        assert_eq!(resolve(r, "/a/rel", false).unwrap(), r.join("a/rel"));
        // A final symlink to a host file is followed inside the root.
        assert_eq!(resolve(r, "/passwd", true).unwrap(), r.join("etc/passwd"));
        assert_eq!(resolve(r, "/passwd", false).unwrap(), r.join("passwd"));
        // Missing directories, and `..` among them.
        assert_eq!(
            resolve(r, "/a/abs/new/dir/../f", true).unwrap(),
            r.join("etc/new/f")
        );
        // A dangling symlink on the way: followed to where its target would be.
        symlink("/made/later", r.join("dangling")).unwrap();
        assert_eq!(
            resolve(r, "/dangling/f", true).unwrap(),
            r.join("made/later/f")
        );
        assert!(resolve(r, "/loop", true).is_err());
        assert!(resolve(r, "/loop/x", true).is_err());
    }

    #[test]
    fn a_parent_swapped_for_a_symlink_after_resolution_does_not_lead_out() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("root");
        let outside = t.path().join("outside");
        fs::create_dir_all(r.join("work/sub")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let target = resolve_in(&r, "/work/sub/file", false).unwrap();
        // The race: between resolution and use, `work` becomes a symlink to a host directory.
        fs::rename(r.join("work"), r.join("moved")).unwrap();
        symlink(&outside, r.join("work")).unwrap();
        fs::create_dir(outside.join("sub")).unwrap();
        fs::write(target.path(), "data").unwrap();
        assert!(
            !outside.join("sub/file").exists(),
            "written outside the root"
        );
        assert_eq!(
            fs::read_to_string(r.join("moved/sub/file")).unwrap(),
            "data"
        );
        // A fresh resolution of the swapped path stays inside too.
        let again = resolve(&r, "/work/sub/other", true).unwrap();
        assert!(again.starts_with(r.canonicalize().unwrap()), "{again:?}");
    }
}
