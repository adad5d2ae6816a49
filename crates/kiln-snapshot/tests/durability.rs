//! What the store flushes to disk, and what it does with what a power cut can leave of what it
//! does not flush (docs/architecture.md, "What is fsynced").

use kiln_snapshot::Store;

/// Run by `small_blobs_are_written_without_a_flush` in a child process under strace: writes
/// one small blob into the store the parent names, and nothing else.
#[test]
#[ignore = "run by small_blobs_are_written_without_a_flush"]
fn write_a_small_blob_for_the_flush_count() {
    let root = std::env::var_os("KILN_SNAPSHOT_TEST_ROOT")
        .expect("KILN_SNAPSHOT_TEST_ROOT names the store");
    let store = Store::open_with(root, kiln_snapshot::SnapshotterKind::Copy).unwrap();
    store.write_blob(b"{\"architecture\":\"arm64\"}").unwrap();
}

#[test]
fn small_blobs_are_written_without_a_flush() {
    // An image config, a manifest, an index: each used to cost a fsync (7 for a build of
    // three platforms), for blobs every reader checks and the next build rewrites.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // The store exists already: only the blob's write is traced.
    Store::open_with(&root, kiln_snapshot::SnapshotterKind::Copy).unwrap();
    let trace = dir.path().join("trace");
    let status = std::process::Command::new("strace")
        .arg("-f")
        .arg("-qq")
        .args(["-e", "trace=fsync,fdatasync,sync_file_range,syncfs,sync"])
        .arg("-o")
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args([
            "write_a_small_blob_for_the_flush_count",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env("KILN_SNAPSHOT_TEST_ROOT", &root)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("this test needs strace (apt-get install strace)");
    assert!(status.success(), "the traced blob write failed");
    let store = Store::open_with(&root, kiln_snapshot::SnapshotterKind::Copy).unwrap();
    let digest = kiln_types::Digest::of(b"{\"architecture\":\"arm64\"}");
    assert_eq!(
        store.read_blob_verified(&digest).unwrap(),
        b"{\"architecture\":\"arm64\"}"
    );
    let trace = std::fs::read_to_string(&trace).unwrap();
    let flushes: Vec<&str> = trace.lines().filter(|l| l.contains("sync")).collect();
    assert!(
        flushes.is_empty(),
        "flushes of a small blob:\n{}",
        flushes.join("\n")
    );
}

#[test]
fn a_small_blob_a_power_cut_damaged_is_caught_and_written_again() {
    // What an unflushed blob can be after a power cut: its name with no bytes, or with as
    // many bytes as it had, zeros.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), kiln_snapshot::SnapshotterKind::Copy).unwrap();
    let config = b"{\"os\":\"linux\"}";
    let digest = store.write_blob(config).unwrap();
    let path = store.blob_path(&digest);
    for damaged in [Vec::new(), vec![0u8; config.len()]] {
        std::fs::write(&path, &damaged).unwrap();
        // Never trusted: a read checks it...
        let err = store.read_blob_verified(&digest).unwrap_err();
        assert!(err.to_string().contains("changed on disk"), "{err}");
        // ...and the build that makes it again replaces it.
        assert_eq!(store.write_blob(config).unwrap(), digest);
        assert_eq!(std::fs::read(&path).unwrap(), config);
    }
}

/// Run by `a_run_layer_is_flushed_file_by_file_not_with_the_whole_disk` in a child process
/// under strace: commits a write view (an overlay over a base layer) in which it wrote
/// `KILN_SNAPSHOT_TEST_FILES` files.
#[test]
#[ignore = "run by a_run_layer_is_flushed_file_by_file_not_with_the_whole_disk"]
fn commit_a_write_view_for_the_flush_count() {
    use kiln_snapshot::{Snapshot, SnapshotterKind, WriteView};
    let root = std::env::var_os("KILN_SNAPSHOT_TEST_ROOT")
        .expect("KILN_SNAPSHOT_TEST_ROOT names the store");
    let files: usize = std::env::var("KILN_SNAPSHOT_TEST_FILES")
        .expect("KILN_SNAPSHOT_TEST_FILES says how many files")
        .parse()
        .unwrap();
    // Pages not yet written back (as after a cold COPY of a large context): what makes one
    // flush per file cheaper than a syncfs.
    let root = std::path::PathBuf::from(root);
    std::fs::write(root.with_extension("dirty"), vec![1u8; 256 << 20]).unwrap();
    let store = Store::open_with(&root, SnapshotterKind::Overlay).unwrap();
    let base = WriteView::new(&store, &Snapshot::default()).unwrap();
    std::fs::write(base.path().join("base"), "b").unwrap();
    let base = base.commit().unwrap();
    let w = WriteView::new(&store, &Snapshot { layers: vec![base] }).unwrap();
    std::fs::create_dir(w.path().join("out")).unwrap();
    for i in 0..files {
        std::fs::write(w.path().join(format!("out/f{i}")), "x").unwrap();
    }
    w.commit().unwrap();
}

/// The flushes and overlay mounts of a traced write view commit with `files` files.
fn traced_commit(files: usize) -> Vec<String> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().join("root");
    let trace = dir.path().join("trace");
    let status = std::process::Command::new("strace")
        .arg("-f")
        .arg("-qq")
        .args(["-e", "trace=fsync,fdatasync,syncfs,sync,mount"])
        .args(["-s", "1000", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().expect("the test binary's path"))
        .args([
            "commit_a_write_view_for_the_flush_count",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env("KILN_SNAPSHOT_TEST_ROOT", &root)
        .env("KILN_SNAPSHOT_TEST_FILES", files.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("this test needs strace (apt-get install strace)");
    assert!(status.success(), "the traced commit failed");
    std::fs::read_to_string(&trace)
        .expect("strace wrote its trace")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_run_layer_is_flushed_file_by_file_not_with_the_whole_disk() {
    // A plain overlay's unmount syncs every dirty page of the store's disk (0.3 s after a
    // cold COPY of a 20,000-file context). Mounted volatile, the unmount syncs nothing and
    // the few files the step wrote are flushed one by one, with their directories.
    let lines = traced_commit(3);
    let overlay = |l: &&String| l.contains("mount(\"overlay\"") && l.contains("upperdir=");
    assert!(
        lines.iter().filter(overlay).all(|l| l.contains("volatile")),
        "the write view is not mounted volatile:\n{}",
        lines.join("\n")
    );
    let fsyncs = lines.iter().filter(|l| l.contains("fsync(")).count();
    // Three files, `out/`, the upper dir and the layer's directory.
    assert!(fsyncs >= 6, "{fsyncs} fsyncs:\n{}", lines.join("\n"));
    assert!(
        !lines.iter().any(|l| l.contains("syncfs(")),
        "{}",
        lines.join("\n")
    );
    // Many files: one syncfs, as the unmount of a plain overlay did.
    let lines = traced_commit(40);
    assert_eq!(
        lines.iter().filter(|l| l.contains("syncfs(")).count(),
        1,
        "{}",
        lines.join("\n")
    );
}
