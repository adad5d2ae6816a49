//! One entry of a context, and the checks the daemon makes on entries it receives.

use std::collections::HashSet;

use crate::{Error, Result, MAX_ENTRIES, MAX_PATH_BYTES};

/// What an entry is. Other file types (devices, FIFOs, sockets) are never synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (never followed, on either side).
    Symlink,
}

/// One entry of a context as the client's walk found it: what fsutil compares (`types.Stat`:
/// path, mode, uid, gid, size, mtime, link target), without any content hash.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// `/`-separated path relative to the context root, without leading `/`, `.` or `..`
    /// components. The empty path is the context root itself (a [`Kind::Dir`]): it carries
    /// the root's mode and mtime, and sorts first.
    pub path: String,
    /// File, directory or symlink.
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner on the client (compared, not applied: context files become `0:0` in a layer).
    pub uid: u32,
    /// Group on the client (compared, not applied).
    pub gid: u32,
    /// A file's size in bytes; 0 for directories and symlinks.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds within the second (below 1e9).
    pub mtime_nsec: u32,
    /// A symlink's target, as read (never resolved); `None` for other kinds.
    pub target: Option<String>,
}

fn bad(path: &str, reason: &'static str) -> Error {
    Error::BadPath {
        // A hostile path could be huge: quote its start only.
        path: path.chars().take(200).collect(),
        reason,
    }
}

/// Checks one path: relative, `/`-separated, no empty, `.` or `..` component, no NUL, at most
/// [`MAX_PATH_BYTES`]. The empty path is the root.
pub(crate) fn check_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Ok(());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(bad(path, "path longer than 4096 bytes"));
    }
    if path.contains('\0') {
        return Err(bad(path, "path holds a NUL byte"));
    }
    if path.starts_with('/') {
        return Err(bad(
            path,
            "absolute path (paths are relative to the context)",
        ));
    }
    for c in path.split('/') {
        match c {
            "" => return Err(bad(path, "empty path component (`//` or a trailing `/`)")),
            "." => return Err(bad(path, "`.` path component")),
            ".." => return Err(bad(path, "`..` path component (would leave the context)")),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a list of entries before anything is planned: every path and target well formed,
/// sorted and unique, no entry below a non-directory, within the limits.
pub(crate) fn check_entries(entries: &[Entry]) -> Result<()> {
    check_entries_max(entries, MAX_ENTRIES)
}

/// [`check_entries`] with another limit than [`MAX_ENTRIES`] (tests).
pub(crate) fn check_entries_max(entries: &[Entry], limit: usize) -> Result<()> {
    if entries.len() > limit {
        return Err(Error::TooManyEntries { limit });
    }
    // Ancestors sort before descendants ("a" < "a/x"), so a non-directory is seen before any
    // entry that would sit below it.
    let mut non_dirs: HashSet<&str> = HashSet::new();
    let mut previous: Option<&str> = None;
    for e in entries {
        check_path(&e.path)?;
        if let Some(p) = previous {
            if p.as_bytes() >= e.path.as_bytes() {
                return Err(Error::Unsorted {
                    previous: p.chars().take(200).collect(),
                    path: e.path.chars().take(200).collect(),
                });
            }
        }
        previous = Some(&e.path);
        if e.path.is_empty() && e.kind != Kind::Dir {
            return Err(bad(&e.path, "the context root must be a directory"));
        }
        let mut prefix = e.path.as_str();
        while let Some(i) = prefix.rfind('/') {
            prefix = &prefix[..i];
            if non_dirs.contains(prefix) {
                return Err(bad(
                    &e.path,
                    "entry below a file or symlink (it would be written through it)",
                ));
            }
        }
        if e.mtime_nsec >= 1_000_000_000 {
            return Err(bad(&e.path, "mtime nanoseconds out of range"));
        }
        match (e.kind, &e.target) {
            (Kind::Symlink, None) => return Err(bad(&e.path, "symlink without a target")),
            (Kind::Symlink, Some(t)) => {
                if t.is_empty() || t.contains('\0') || t.len() > MAX_PATH_BYTES {
                    return Err(bad(
                        &e.path,
                        "symlink target empty, over 4096 bytes or with NUL",
                    ));
                }
            }
            (_, Some(_)) => return Err(bad(&e.path, "a target on an entry that is no symlink")),
            (_, None) => {}
        }
        if e.kind != Kind::Dir {
            non_dirs.insert(&e.path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_leave_the_mirror_are_refused() {
        for p in [
            "/etc/x",
            "../x",
            "a/../../x",
            "a//b",
            "a/",
            "./a",
            "a/.",
            "a\0b",
        ] {
            let err = check_path(p).expect_err(p);
            assert!(
                err.to_string().contains(&format!("{:?}", p)),
                "{p}: error names the path: {err}"
            );
        }
        for p in ["", "a", "a/b", ".dockerignore", "a/..b", "...", "a b/c"] {
            check_path(p).expect(p);
        }
        let long = "a/".repeat(2049) + "a";
        assert!(check_path(&long).is_err());
    }
}
