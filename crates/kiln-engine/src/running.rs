//! One execution of a step at a time per cache key, across `kiln` processes. The solver
//! already runs a key once within a build; two builds on one store (two terminals, CI jobs)
//! would each run it. A build about to execute a step holds `running/<key>` (an exclusive
//! flock) until its record is written; another build that needs the same key waits for it,
//! then finds the record and takes it instead of running the step again (as BuildKit's
//! daemon shares a running vertex between its clients).
//!
//! The lock files are removed by their holder, before it unlocks: a waiter that then gets a
//! lock on a removed file sees that its path names another file (or none) and starts over.
//! The kernel drops the lock of a killed build, so a crash never blocks the others.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::Duration;

use kiln_solver::CancellationToken;
use kiln_types::Digest;

use crate::Error;

/// The directory of the lock files, in the store root.
const RUNNING: &str = "running";

/// How often a step waiting for another build's run looks whether its own build was cancelled
/// (only while it waits: a step nobody else runs takes its lock at once).
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The right to run the step of one cache key; see the module documentation.
pub(crate) struct Running {
    path: PathBuf,
    file: Option<File>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Removed while still locked, so that nobody locks this file after the holder.
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

/// Takes the lock of `key` in the store at `root`, waiting while another build holds it (then
/// `log` says so once); a cancelled build stops waiting.
pub(crate) fn hold(
    root: &Path,
    key: &Digest,
    cancel: &CancellationToken,
    log: &(dyn Fn(String) + Send + Sync),
) -> Result<Running, Error> {
    let dir = root.join(RUNNING);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let path = dir.join(key.hex());
    let mut told = false;
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open step lock", &path, e))?;
        let file = match file.try_lock() {
            Ok(()) => file,
            Err(std::fs::TryLockError::WouldBlock) => {
                if !told {
                    log("waiting for another kiln build that runs this step".to_owned());
                    told = true;
                }
                wait(file, &path, cancel)?
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("lock step", &path, e));
            }
        };
        let ours = file
            .metadata()
            .map_err(|e| Error::io("stat step lock", &path, e))?;
        match std::fs::metadata(&path) {
            Ok(seen) if seen.ino() == ours.ino() && seen.dev() == ours.dev() => {
                return Ok(Running {
                    path,
                    file: Some(file),
                })
            }
            // The holder removed it as it finished: a fresh file for the next holder.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat step lock", &path, e)),
        }
    }
}

/// Removes the lock files that builds killed while running a step left behind (those nobody
/// holds). Best effort: a file that cannot be removed now is removed by its next holder.
pub(crate) fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join(RUNNING)) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(file) = File::open(e.path()) else {
            continue;
        };
        // Held: a live build runs that step. A holder that opened the file but locks it only
        // after this removal sees the path gone and starts over (see `hold`).
        if file.try_lock().is_ok() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// flock(2) cannot be interrupted by a cancellation token: a thread of its own waits, and this
/// one watches the token. A thread whose waiter gave up drops the file once it gets the lock,
/// which releases it.
fn wait(file: File, path: &Path, cancel: &CancellationToken) -> Result<File, Error> {
    let (tx, rx) = sync_channel(1);
    std::thread::Builder::new()
        .name("kiln-step-lock".into())
        .spawn(move || {
            let r = file.lock().map(|()| file);
            let _ = tx.send(r);
        })
        .map_err(|e| Error::io("start a thread to wait for step lock", path, e))?;
    loop {
        match rx.recv_timeout(CANCEL_POLL) {
            Ok(r) => return r.map_err(|e| Error::io("lock step", path, e)),
            Err(RecvTimeoutError::Timeout) if cancel.is_cancelled() => {
                return Err(Error::io(
                    "wait for another build's run of this step",
                    path,
                    std::io::Error::new(std::io::ErrorKind::Interrupted, "build cancelled"),
                ));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::io(
                    "wait for step lock",
                    path,
                    std::io::Error::other("the waiting thread ended without an answer"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_for_the_first_and_gets_a_fresh_lock() {
        let t = tempfile::tempdir().expect("tempdir");
        let key = Digest::of(b"step");
        let cancel = CancellationToken::new();
        let first = hold(t.path(), &key, &cancel, &|_| {}).expect("first");
        let (tx, rx) = std::sync::mpsc::channel();
        let root = t.path().to_owned();
        let waiter = std::thread::spawn(move || {
            let c = CancellationToken::new();
            let said = std::sync::Mutex::new(Vec::new());
            let held = hold(&root, &key, &c, &|l| said.lock().expect("log").push(l));
            tx.send(()).expect("send");
            (
                held.map(|h| h.path.clone()),
                said.into_inner().expect("log"),
            )
        });
        // The waiter cannot get it while the first holds it: nothing arrives within a while.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(first);
        let (path, said) = waiter.join().expect("waiter");
        assert_eq!(
            path.expect("second"),
            t.path().join(RUNNING).join(key.hex())
        );
        assert_eq!(said.len(), 1, "{said:?}");
        // Dropped, the second leaves no file behind.
        assert_eq!(
            std::fs::read_dir(t.path().join(RUNNING))
                .expect("dir")
                .count(),
            0
        );
    }

    #[test]
    fn a_sweep_removes_what_nobody_holds() {
        let t = tempfile::tempdir().expect("tempdir");
        let cancel = CancellationToken::new();
        let live = hold(t.path(), &Digest::of(b"live"), &cancel, &|_| {}).expect("live");
        // As a build killed while running the step leaves it.
        let dead = t.path().join(RUNNING).join(Digest::of(b"dead").hex());
        std::fs::write(&dead, b"").expect("write");
        sweep(t.path());
        assert!(!dead.exists());
        assert!(live.path.exists());
    }

    #[test]
    fn a_cancelled_build_stops_waiting() {
        let t = tempfile::tempdir().expect("tempdir");
        let key = Digest::of(b"step");
        let _first = hold(t.path(), &key, &CancellationToken::new(), &|_| {}).expect("first");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = hold(t.path(), &key, &cancel, &|_| {})
            .err()
            .expect("a cancelled wait fails");
        assert!(err.to_string().contains("cancelled"), "{err}");
    }
}
