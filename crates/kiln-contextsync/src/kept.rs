//! The daemon's mirrors as build cache: which are in use, when each was last used, how large
//! they are, and removing the unused ones (BuildKit keeps its `source.local` records the same
//! way: they are the first thing its default GC policy removes).
//!
//! A session holds [`InUse`] on a mirror directory from before its sync until its build ends:
//! a shared `flock` on the directory's `use` file, whose mtime is the mirror's last use. A
//! collector ([`remove_unused`]) takes that lock exclusively without waiting: it never removes
//! a mirror a session holds, and a session arriving while a mirror is being removed waits for
//! the removal, finds its `use` file gone and starts a new mirror.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::{Error, Result};

/// The file a session locks shared while it uses the mirror (mtime: the last use).
const USE: &str = "use";
/// The file naming the context the mirror holds (for `kiln du`), written by [`InUse::hold`].
const SOURCE: &str = "source";
/// Prefix of a mirror directory being removed (renamed first, so no session opens it again).
const GONE: &str = ".gone-";

/// BuildKit's default policy for `source.local` records (moby/buildkit `DefaultGCPolicy`):
/// those not used for 48 hours go once they take more than 512 MB, least recently used first.
pub const DEFAULT_UNUSED_FOR: Duration = Duration::from_secs(48 * 3600);
/// See [`DEFAULT_UNUSED_FOR`].
pub const DEFAULT_MAX_BYTES: u64 = 512 * 1000 * 1000;

/// A mirror directory held in use by a session: the shared lock of its `use` file. The file's
/// mtime is set when it is taken and again when it is dropped (the end of the build).
#[derive(Debug)]
pub struct InUse {
    file: fs::File,
}

impl InUse {
    /// Marks `dir` (a mirror directory, made if missing) in use, waiting only for a collector
    /// removing it (a short hold); `source` says which context it mirrors (shown by `kiln du`).
    pub fn hold(dir: &Path, source: &str) -> Result<InUse> {
        loop {
            fs::create_dir_all(dir).map_err(|e| Error::io("create mirror dir", dir, e))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("chmod", dir, e))?;
            let path = dir.join(USE);
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path);
            let file = match file {
                Ok(f) => f,
                // A collector renamed the directory away between our mkdir and open.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("open", &path, e)),
            };
            file.lock_shared()
                .map_err(|e| Error::io("lock", &path, e))?;
            // A collector may have removed the directory while we waited: the file we hold is
            // then no longer the one at `path`, and a new mirror starts.
            let held = file.metadata().map_err(|e| Error::io("stat", &path, e))?;
            let same = fs::metadata(&path)
                .map(|m| m.dev() == held.dev() && m.ino() == held.ino())
                .unwrap_or(false);
            if !same {
                continue;
            }
            let source_path = dir.join(SOURCE);
            if fs::read_to_string(&source_path).ok().as_deref() != Some(source) {
                fs::write(&source_path, source).map_err(|e| Error::io("write", &source_path, e))?;
            }
            let held = InUse { file };
            held.touch();
            return Ok(held);
        }
    }

    fn touch(&self) {
        // Best effort: a stale last-use time only makes the mirror go earlier.
        let _ = self.file.set_modified(SystemTime::now());
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.touch();
    }
}

/// One mirror directory as `kiln du` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorUsage {
    /// The directory.
    pub dir: PathBuf,
    /// Its name (a hash of the client's key).
    pub id: String,
    /// Bytes on disk (apparent sizes of files, directories and symlinks, as `du -sb`).
    pub size: u64,
    /// Last use (the `use` file's mtime, else the directory's).
    pub last_used: SystemTime,
    /// A session holds it (or a sync has it open).
    pub in_use: bool,
    /// The context it mirrors, as the session named it.
    pub source: Option<String>,
}

/// The mirrors under `contexts` (the daemon's `<root>/contexts`), none when it does not exist.
pub fn list_mirrors(contexts: &Path) -> Result<Vec<MirrorUsage>> {
    list(contexts, true)
}

/// [`list_mirrors`]; without `sizes`, every size is 0 (no tree is walked).
fn list(contexts: &Path, sizes: bool) -> Result<Vec<MirrorUsage>> {
    let entries = match fs::read_dir(contexts) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", contexts, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read", contexts, e))?;
        let id = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        if id.starts_with('.') || !dir.is_dir() {
            continue;
        }
        let last_used = fs::metadata(dir.join(USE))
            .or_else(|_| fs::metadata(&dir))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let in_use = match try_lock_all(&dir)? {
            Some(locks) => {
                drop(locks);
                false
            }
            None => true,
        };
        out.push(MirrorUsage {
            size: if sizes { tree_size(&dir)? } else { 0 },
            source: fs::read_to_string(dir.join(SOURCE)).ok(),
            dir,
            id,
            last_used,
            in_use,
        });
    }
    out.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Takes the `use` and `lock` files of `dir` exclusively without waiting: `None` when a session
/// or a sync holds either.
fn try_lock_all(dir: &Path) -> Result<Option<Vec<fs::File>>> {
    let mut held = Vec::new();
    for name in [USE, "lock"] {
        let path = dir.join(name);
        let file = match fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("open", &path, e)),
        };
        match file.try_lock() {
            Ok(()) => held.push(file),
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
    }
    Ok(Some(held))
}

/// Removes the mirror `dir` unless a session or a sync holds it (never waits). Whether it was
/// removed.
pub fn remove_unused(dir: &Path) -> Result<bool> {
    let Some(locks) = try_lock_all(dir)? else {
        return Ok(false);
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let gone = dir.with_file_name(format!("{GONE}{name}-{}", std::process::id()));
    // Renamed while locked: a session waiting for the lock then finds no `use` file at its
    // path and starts a new mirror; nothing opens the old one again.
    fs::rename(dir, &gone).map_err(|e| Error::io("rename", dir, e))?;
    drop(locks);
    fs::remove_dir_all(&gone).map_err(|e| Error::io("remove", &gone, e))?;
    Ok(true)
}

/// Which mirrors a collection removes, least recently used first: only ones not in use and
/// not used for `unused_for` (at `now`), until the mirrors take at most `max_bytes` in all.
/// Indexes into `mirrors`.
pub fn select(
    mirrors: &[MirrorUsage],
    now: SystemTime,
    unused_for: Duration,
    max_bytes: u64,
) -> Vec<usize> {
    let mut total: u64 = mirrors.iter().map(|m| m.size).sum();
    let mut order: Vec<usize> = (0..mirrors.len()).collect();
    order.sort_by(|&a, &b| {
        mirrors[a]
            .last_used
            .cmp(&mirrors[b].last_used)
            .then(mirrors[a].id.cmp(&mirrors[b].id))
    });
    let mut chosen = Vec::new();
    for i in order {
        if total <= max_bytes {
            break;
        }
        let m = &mirrors[i];
        let idle = now.duration_since(m.last_used).unwrap_or(Duration::ZERO);
        if m.in_use || idle < unused_for {
            continue;
        }
        total -= m.size;
        chosen.push(i);
    }
    chosen
}

/// The daemon's collection (after each build and at start): removes what [`select`] chooses
/// under `contexts`, and what an interrupted removal left. The mirrors removed.
pub fn collect(contexts: &Path, unused_for: Duration, max_bytes: u64) -> Result<Vec<MirrorUsage>> {
    sweep_gone(contexts);
    // Runs after every build: the trees are walked only when some mirror could go.
    let now = SystemTime::now();
    let idle = |m: &MirrorUsage| {
        !m.in_use && now.duration_since(m.last_used).unwrap_or(Duration::ZERO) >= unused_for
    };
    if !list(contexts, false)?.iter().any(idle) {
        return Ok(Vec::new());
    }
    let mirrors = list_mirrors(contexts)?;
    let mut removed = Vec::new();
    for i in select(&mirrors, now, unused_for, max_bytes) {
        if remove_unused(&mirrors[i].dir)? {
            removed.push(mirrors[i].clone());
        }
    }
    Ok(removed)
}

/// Removes directories a removal renamed and did not finish deleting (a process killed
/// mid-way). Best effort.
fn sweep_gone(contexts: &Path) {
    let Ok(entries) = fs::read_dir(contexts) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(GONE) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Apparent size of everything under `dir` (itself included), as `du -sb` counts it: each
/// inode once.
fn tree_size(dir: &Path) -> Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            // Removed while we walk (a sync replacing a file): it no longer takes space.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", &p, e)),
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.len();
        if meta.is_dir() {
            let entries = match fs::read_dir(&p) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read", &p, e)),
            };
            for e in entries {
                stack.push(e.map_err(|e| Error::io("read", &p, e))?.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(id: &str, size: u64, idle_h: u64, in_use: bool, now: SystemTime) -> MirrorUsage {
        MirrorUsage {
            dir: PathBuf::from(id),
            id: id.to_owned(),
            size,
            last_used: now - Duration::from_secs(idle_h * 3600),
            in_use,
            source: None,
        }
    }

    #[test]
    fn selection_takes_old_unused_mirrors_lru_first_until_under_the_limit() {
        let now = SystemTime::now();
        let h48 = Duration::from_secs(48 * 3600);
        let ms = [
            mirror("recent", 400, 1, false, now),
            mirror("old", 300, 72, false, now),
            mirror("oldest", 200, 100, false, now),
            mirror("busy", 500, 200, true, now),
            mirror("older", 100, 80, false, now),
        ];
        // 1500 in all: oldest (200) then older (100) bring it to 1200 <= 1250.
        let ids = |sel: Vec<usize>| {
            sel.into_iter()
                .map(|i| ms[i].id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(select(&ms, now, h48, 1250)), ["oldest", "older"]);
        // Under the limit: nothing, however old.
        assert!(select(&ms, now, h48, 1500).is_empty());
        // Limit 0: every unused mirror idle for 48 h, never the busy one nor the recent one.
        assert_eq!(ids(select(&ms, now, h48, 0)), ["oldest", "older", "old"]);
    }

    #[test]
    fn a_held_mirror_is_never_removed_and_a_free_one_is() {
        let tmp = tempfile::tempdir().unwrap();
        let contexts = tmp.path().join("contexts");
        let a = contexts.join("a");
        let b = contexts.join("b");
        let held = InUse::hold(&a, "main context").unwrap();
        drop(InUse::hold(&b, "build context lib").unwrap());
        std::fs::write(b.join("data"), vec![0u8; 1000]).unwrap();
        let listed = list_mirrors(&contexts).unwrap();
        assert_eq!(listed.len(), 2);
        let (la, lb) = (
            &listed.iter().find(|m| m.id == "a").unwrap(),
            &listed.iter().find(|m| m.id == "b").unwrap(),
        );
        assert!(la.in_use && !lb.in_use);
        assert_eq!(lb.source.as_deref(), Some("build context lib"));
        assert!(lb.size >= 1000);
        // Everything idle for no time and a limit of 0: only b goes.
        let removed = collect(&contexts, Duration::ZERO, 0).unwrap();
        assert_eq!(
            removed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(a.is_dir() && !b.exists());
        assert!(!remove_unused(&a).unwrap());
        drop(held);
        assert!(remove_unused(&a).unwrap());
        assert!(list_mirrors(&contexts).unwrap().is_empty());
    }
}
