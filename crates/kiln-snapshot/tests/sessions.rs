//! The store's `tmp/` after crashes: a process killed with SIGKILL leaves its temporaries
//! behind, and the next `Store::open` removes them, while the temporaries of a process that
//! still runs on the same store stay. The "other process" is this test binary run again as a
//! child (`child_holds_temporaries`), so that its death is a real one. And a blob written
//! again over a copy changed on disk repairs it.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kiln_snapshot::*;

const CHILD_ENV: &str = "KILN_TEST_SESSION_CHILD";
const READY: &str = "KILN-SESSION-CHILD-READY";

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Not a test of its own: run by `spawn_holder` in a child process, it opens the store named
/// by the environment, makes temporaries of every kind, says so, and waits to be killed.
#[test]
fn child_holds_temporaries() {
    let Some(root) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = Store::open_with(PathBuf::from(root), SnapshotterKind::Copy).unwrap();
    let dir = store.temp_dir("scratch").unwrap();
    fs::write(dir.join("file"), b"data").unwrap();
    let layer = store.new_layer().unwrap();
    fs::write(layer.fs_dir().join("f"), b"x").unwrap();
    let mut blob = store.blob_writer().unwrap();
    std::io::Write::write_all(&mut blob, b"half a blob").unwrap();
    // The harness prints `test child_holds_temporaries ... ` on the same line first.
    println!("{READY}");
    // Until the parent kills us (or closes our stdin, should it die first).
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    drop((layer, blob));
}

/// A child process holding temporaries in `root`, once they exist.
fn spawn_holder(root: &Path) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_holds_temporaries",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ready = BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains(READY));
        let _ = tx.send(ready);
    });
    // Hanging is the failure to avoid here: a generous bound.
    let ready = rx.recv_timeout(Duration::from_secs(60)).unwrap_or(false);
    if !ready {
        let _ = child.kill();
        panic!("the child store never got ready");
    }
    child
}

#[test]
fn a_killed_process_temporaries_are_removed_by_the_next_open() {
    let t = tempfile::tempdir().unwrap();
    let mut child = spawn_holder(t.path());
    let held = entries(&t.path().join("tmp"));
    assert_eq!(held.len(), 3, "{held:?}");

    // While it lives, another open keeps them.
    let live = Store::open_with(t.path(), SnapshotterKind::Copy).unwrap();
    assert_eq!(entries(&t.path().join("tmp")), held);
    drop(live);

    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(entries(&t.path().join("tmp")), held, "SIGKILL left them");

    let store = Store::open_with(t.path(), SnapshotterKind::Copy).unwrap();
    assert_eq!(entries(&t.path().join("tmp")), Vec::<String>::new());
    // Only the new session's lock file is left; it goes with the store.
    assert_eq!(entries(&t.path().join("sessions")).len(), 1);
    drop(store);
    assert_eq!(entries(&t.path().join("sessions")), Vec::<String>::new());
}

#[test]
fn temporaries_without_a_live_session_are_leftovers() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open_with(t.path(), SnapshotterKind::Copy).unwrap();
    let mine = store.temp_dir("mine").unwrap();
    let tmp = t.path().join("tmp");
    // As kilns before sessions named them (178 of these after 15 kills, issue 9).
    fs::create_dir_all(tmp.join("view-0123456789ab/merged")).unwrap();
    fs::write(tmp.join("blob-ba9876543210"), b"partial").unwrap();
    // A session that ended without removing everything (its lock file is gone).
    fs::create_dir_all(tmp.join("s0123456789ab-layer-ffffffffffff/fs")).unwrap();

    let other = Store::open_with(t.path(), SnapshotterKind::Copy).unwrap();
    assert_eq!(
        entries(&tmp),
        vec![mine.file_name().unwrap().to_str().unwrap().to_owned()],
        "only the live store's own temporary stays"
    );
    drop((other, store));
}

#[test]
fn a_session_sweeps_again_when_it_ends() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open_with(t.path(), SnapshotterKind::Copy).unwrap();
    // A dead session that looked live when this one started (its lock still held for a
    // moment by a dying child): its lock file, now free, and its temporaries.
    fs::write(t.path().join("sessions/s0123456789ab"), b"").unwrap();
    fs::create_dir_all(t.path().join("tmp/s0123456789ab-layer-ffffffffffff/fs")).unwrap();
    drop(store);
    assert_eq!(entries(&t.path().join("tmp")), Vec::<String>::new());
    assert_eq!(entries(&t.path().join("sessions")), Vec::<String>::new());
}

#[test]
fn stores_on_one_root_share_it_and_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let a = Store::open_with(t.path(), SnapshotterKind::Copy).unwrap();
    let b = Store::open_with(t.path(), SnapshotterKind::Copy).unwrap();
    let da = a.temp_dir("a").unwrap();
    let db = b.temp_dir("b").unwrap();
    // A third open sweeps while both live: nothing of theirs goes.
    let c = Store::open_with(t.path(), SnapshotterKind::Copy).unwrap();
    assert!(da.is_dir() && db.is_dir());
    fs::remove_dir(&da).unwrap();
    fs::remove_dir(&db).unwrap();
    let digest = a.write_blob(b"blob").unwrap();
    assert!(b.has_blob(&digest));
    drop((a, b, c));
    assert_eq!(entries(&t.path().join("tmp")), Vec::<String>::new());
    assert_eq!(entries(&t.path().join("sessions")), Vec::<String>::new());
}

#[test]
fn isolating_mounts_refuses_once_threads_run() {
    // The test harness runs this on a thread of its own: a namespace would not cover the
    // others, so the call must refuse rather than half-work.
    let err = isolate_mounts().unwrap_err();
    assert!(err.to_string().contains("threads"), "{err}");
}

#[test]
fn writing_a_blob_repairs_a_copy_changed_on_disk() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open_with(t.path(), SnapshotterKind::Copy).unwrap();
    let digest = store.write_blob(b"a config").unwrap();
    // Changed behind kiln's back (same size, one byte flipped).
    fs::write(store.blob_path(&digest), b"a confiG").unwrap();
    assert_eq!(store.write_blob(b"a config").unwrap(), digest);
    assert_eq!(store.read_blob(&digest).unwrap(), b"a config");
}
