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
