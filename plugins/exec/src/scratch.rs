//! The sandbox's scratch directories (its `hosts` and `resolv.conf`, bind-mounted into the
//! step) live in the system's temp dir, outside kiln's store. A `kiln` killed with SIGKILL
//! cannot remove them, so each is held by an exclusive flock on the directory while its step
//! runs, and making one first removes those nobody holds: the leftovers of killed builds, never
//! the directory of a step another kiln runs now. Only names with this module's prefix are
//! touched (kilns before it used `kiln-exec-`, without a lock: theirs are left alone).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// A scratch directory held while it lives; removed when dropped.
pub(crate) struct Scratch {
    /// Always `Some` until dropped.
    dir: Option<tempfile::TempDir>,
    _lock: File,
    base: PathBuf,
    prefix: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The directory goes while it is still locked.
        drop(self.dir.take());
        // Swept again once the step is over: a killed build's scratch can stay locked for a
        // moment by its sandbox child (between clone and exec, until PDEATHSIG ends it), so
        // the sweep at this step's start may have had to spare it.
        sweep(&self.base, &self.prefix);
    }
}

impl Scratch {
    /// A fresh scratch directory in the system's temp dir.
    pub(crate) fn new(prefix: &str) -> Result<Scratch, Error> {
        Scratch::new_in(&std::env::temp_dir(), prefix)
    }

    fn new_in(base: &Path, prefix: &str) -> Result<Scratch, Error> {
        sweep(base, prefix);
        loop {
            let dir = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in(base)
                .map_err(|e| Error::io("cannot create a temporary directory in", base, e))?;
            // Between its creation and the lock, another step's sweep (in this build or
            // another) may take it for a leftover and remove it: then make another.
            let lock = match File::open(dir.path()).and_then(|f| f.lock().map(|()| f)) {
                Ok(lock) => lock,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("cannot lock", dir.path(), e)),
            };
            let ours = lock
                .metadata()
                .map_err(|e| Error::io("cannot stat", dir.path(), e))?;
            match std::fs::metadata(dir.path()) {
                Ok(seen) if seen.ino() == ours.ino() && seen.dev() == ours.dev() => {
                    return Ok(Scratch {
                        dir: Some(dir),
                        _lock: lock,
                        base: base.to_owned(),
                        prefix: prefix.to_owned(),
                    })
                }
                _ => continue,
            }
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("a scratch keeps its directory until it is dropped")
            .path()
    }
}

/// Removes the directories named `prefix*` in `base` that no live step holds. Best effort: a
/// sweep never fails a step.
fn sweep(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(prefix) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(dir) = File::open(e.path()) else {
            continue;
        };
        if dir.try_lock().is_ok() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_go_and_live_scratch_stays() {
        let base = tempfile::tempdir().expect("tempdir");
        let live = Scratch::new_in(base.path(), "kiln-step-").expect("live");
        std::fs::write(live.path().join("hosts"), b"x").expect("write");
        // As a build killed with SIGKILL leaves it: nobody holds it.
        let dead = base.path().join("kiln-step-dead");
        std::fs::create_dir_all(dead.join("sub")).expect("mkdir");
        // Not ours to judge: another prefix.
        let other = base.path().join("kiln-exec-old");
        std::fs::create_dir(&other).expect("mkdir");

        let next = Scratch::new_in(base.path(), "kiln-step-").expect("next");
        assert!(!dead.exists());
        assert!(other.exists());
        assert!(live.path().join("hosts").is_file());
        let (a, b) = (live.path().to_owned(), next.path().to_owned());
        drop((live, next));
        assert!(!a.exists() && !b.exists());
    }
}
