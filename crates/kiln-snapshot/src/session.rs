//! Who owns what under the store's `tmp/`. Every process that opens a store starts a session:
//! a lock file `sessions/<id>` it holds (`flock`) while it lives, and every temporary it makes
//! is named `tmp/<id>-...`. The kernel drops the lock when the process dies, however it dies
//! (SIGKILL included), so the next `Store::open` can tell the temporaries of dead processes
//! from those of live ones and remove only the former: concurrent builds on one store keep
//! theirs. Names without a session (written by kilns before sessions existed) and names of a
//! session whose lock file is gone are leftovers too.
//!
//! Invariants: a session's lock file exists (and is locked) before its first temporary is
//! created, and is removed only after the session ended; so a temporary whose session has no
//! lock file is a leftover.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::{io_err, Result};

/// The directory of session lock files, beside `tmp/` (so that `tmp/` is empty when no
/// build runs).
pub(crate) const SESSIONS: &str = "sessions";

/// The live session of this process on one store. Dropped (with the last `Store` clone), it
/// removes its lock file; its temporaries are removed by their own guards.
#[derive(Debug)]
pub(crate) struct Session {
    id: String,
    lock_path: PathBuf,
    // Held for the session's whole life: the lock *is* the liveness others test.
    _lock: Flock<fs::File>,
}

impl Session {
    /// Starts a session on the store at `root` (whose `sessions/` exists).
    pub(crate) fn start(root: &Path, mut fresh_id: impl FnMut() -> String) -> Result<Session> {
        let dir = root.join(SESSIONS);
        loop {
            let id = format!("s{}", fresh_id());
            let lock_path = dir.join(&id);
            let file = match fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&lock_path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &lock_path)(e)),
            };
            let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
                io_err("lock", &lock_path)(std::io::Error::from_raw_os_error(errno as i32))
            })?;
            // Between the create and the lock, a sweeper may have found the file unlocked,
            // taken it for a dead session's and removed it: then this lock guards nothing
            // anyone can see, and a new session is started instead.
            let ours = lock.metadata().map_err(io_err("stat", &lock_path))?;
            match fs::metadata(&lock_path) {
                Ok(seen) if seen.ino() == ours.ino() && seen.dev() == ours.dev() => {
                    return Ok(Session {
                        id,
                        lock_path,
                        _lock: lock,
                    })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", &lock_path)(e)),
            }
        }
    }

    /// The prefix of this session's temporaries.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Swept again on the way out: a killed build's lock can outlive it for a moment in a
        // child that inherited it (a RUN sandbox between its clone and its exec, killed by
        // PDEATHSIG soon after), and a build started right then takes that session for live.
        if let Some(root) = self.lock_path.parent().and_then(Path::parent) {
            sweep(root, &self.id);
        }
        // Unlinked while still locked: a sweeper that opened it meanwhile takes it for dead
        // once the lock drops, which it is.
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// The session a temporary's name belongs to: `s` + 12 hex digits before the first `-`.
fn session_of(name: &str) -> Option<&str> {
    let (id, _) = name.split_once('-')?;
    let hex = id.strip_prefix('s')?;
    (hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// What a sweep removed and what it had to leave.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Entries of `tmp/` removed (leftovers of dead processes).
    pub(crate) removed: usize,
    /// Leftovers that could not be removed (still mounted somewhere, or an I/O error).
    pub(crate) kept: usize,
}

/// Removes the temporaries of every session but live ones (`own` included), and the lock
/// files of dead sessions. Best effort: what cannot be removed is counted and left for the
/// next sweep; a sweep never fails a build.
pub(crate) fn sweep(root: &Path, own: &str) -> Swept {
    let sessions = root.join(SESSIONS);
    let tmp = root.join("tmp");
    // Dead sessions are locked by this sweep until their temporaries are gone, so that a
    // concurrent sweep leaves them to this one.
    let mut dead: Vec<(String, Flock<fs::File>)> = Vec::new();
    if let Ok(entries) = fs::read_dir(&sessions) {
        for e in entries.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if name == own {
                continue;
            }
            let Ok(file) = fs::OpenOptions::new().read(true).open(e.path()) else {
                continue;
            };
            // Held (EWOULDBLOCK): a live session. Any other failure: left for a later sweep.
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                dead.push((name, lock));
            }
        }
    }
    let dead_ids: BTreeSet<&str> = dead.iter().map(|(n, _)| n.as_str()).collect();
    let mut swept = Swept::default();
    let mut mounts: Option<Vec<PathBuf>> = None;
    if let Ok(entries) = fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name();
            let stale = match name.to_str().and_then(session_of) {
                Some(id) if id == own => false,
                Some(id) if dead_ids.contains(id) => true,
                // A live session, or one that started after the scan above.
                Some(id) if sessions.join(id).exists() => false,
                // A session that ended and left this behind, or a kiln before sessions.
                _ => true,
            };
            if !stale {
                continue;
            }
            let path = e.path();
            // A mount under a leftover (a kiln that mounted in the host's namespace) cannot
            // be removed from here, and must not be walked into.
            let mounts = mounts.get_or_insert_with(|| mount_points_under(&tmp));
            if mounts.iter().any(|m| m.starts_with(&path)) {
                swept.kept += 1;
                continue;
            }
            let removed = match e.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            match removed {
                Ok(()) => swept.removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => swept.kept += 1,
            }
        }
    }
    for (name, lock) in dead {
        let _ = fs::remove_file(sessions.join(&name));
        drop(lock);
    }
    swept
}

/// The mount points at or below `dir` in this process's mount namespace.
fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| &b[i + 1..i + 4])
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let n = d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0'));
                u8::try_from(n).ok()
            });
        if let Some(c) = code {
            out.push(c);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_session() {
        assert_eq!(session_of("s0123456789ab-view-ffff"), Some("s0123456789ab"));
        assert_eq!(session_of("view-0123456789ab"), None);
        assert_eq!(session_of("s0123456789a-view"), None);
        assert_eq!(session_of("sxyz456789abc-x"), None);
        assert_eq!(session_of("s0123456789ab"), None);
    }

    #[test]
    fn mountinfo_escapes_are_read() {
        assert_eq!(unescape_octal(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_octal(r"/end\04"), r"/end\04");
    }
}
