//! Real overlay mounts (the machines run as root); a store's layers stack as expected.
#![allow(clippy::unwrap_used)]

use std::fs;

use kiln_snapshot::*;

#[test]
fn layers_stack_and_changes_become_a_layer() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();

    let base = WriteView::new(&store, &Snapshot::default()).unwrap();
    fs::create_dir(base.path().join("etc")).unwrap();
    fs::write(base.path().join("etc/keep"), b"1").unwrap();
    fs::write(base.path().join("etc/drop"), b"2").unwrap();
    let l1 = base.commit().unwrap();
    let s1 = Snapshot {
        layers: vec![l1.clone()],
    };

    let w = WriteView::new(&store, &s1).unwrap();
    assert_eq!(fs::read(w.path().join("etc/keep")).unwrap(), b"1");
    fs::remove_file(w.path().join("etc/drop")).unwrap();
    fs::write(w.path().join("new"), b"3").unwrap();
    let l2 = w.commit().unwrap();
    let s2 = Snapshot {
        layers: vec![l1, l2.clone()],
    };

    let v = ReadView::new(&store, &s2).unwrap();
    assert!(v.path().join("etc/keep").exists());
    assert!(!v.path().join("etc/drop").exists());
    assert_eq!(fs::read(v.path().join("new")).unwrap(), b"3");
    let mounted = v.path().to_owned();
    drop(v);
    assert!(!mounted.exists(), "view dir removed after unmount");

    let blob = store.layer_blob(&l2, Compression::Gzip).unwrap();
    let again = store.layer_blob(&l2, Compression::Gzip).unwrap();
    assert_eq!(blob, again);
    let gz = store.read_blob(&blob.digest).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
    let names: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["etc/", "etc/.wh.drop", "new"]);
}

#[test]
fn blob_writer_verifies_and_publishes_atomically() {
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let mut w = store.blob_writer().unwrap();
    w.write_all(b"hello").unwrap();
    let d = w.commit(Some(&kiln_types::Digest::of(b"hello"))).unwrap();
    assert_eq!(store.read_blob(&d).unwrap(), b"hello");
    let mut bad = store.blob_writer().unwrap();
    bad.write_all(b"evil").unwrap();
    let err = bad
        .commit(Some(&kiln_types::Digest::of(b"good")))
        .unwrap_err();
    assert!(err.to_string().contains("expected"), "{err}");
    assert!(!store.has_blob(&kiln_types::Digest::of(b"evil")));
    assert_eq!(std::fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
}
