//! Real overlay mounts (the machines run as root) and the copy snapshotter: a store's layers
//! stack as expected, and both snapshotters turn the same changes into the same layer.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kiln_snapshot::*;

const KINDS: [SnapshotterKind; 2] = [SnapshotterKind::Overlay, SnapshotterKind::Copy];

/// Runs `body` once per snapshotter, each with a fresh store.
fn each_kind(body: impl Fn(&Store)) {
    for kind in KINDS {
        eprintln!("--- snapshotter {kind:?}");
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_with(t.path(), kind).unwrap();
        body(&store);
        assert_eq!(
            fs::read_dir(t.path().join("tmp")).unwrap().count(),
            0,
            "{kind:?}: views and builders leave nothing in tmp/"
        );
    }
}

/// (name, type, mode, uid, gid, link name, contents, xattrs) of every entry; mtimes are left
/// out (each run writes at its own time).
type TarEntry = (
    String,
    tar::EntryType,
    u32,
    u64,
    u64,
    String,
    Vec<u8>,
    Vec<String>,
);

fn tar_entries(store: &Store, layer: &LayerId) -> Vec<TarEntry> {
    let mut bytes = Vec::new();
    write_layer_tar(
        &store.layer_dir(layer),
        Compression::Uncompressed,
        &mut bytes,
    )
    .unwrap();
    let mut a = tar::Archive::new(bytes.as_slice());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let xattrs = e
                .pax_extensions()
                .unwrap()
                .map(|x| {
                    x.map(|x| {
                        let x = x.unwrap();
                        format!("{}={:?}", x.key().unwrap(), x.value_bytes())
                    })
                    .collect()
                })
                .unwrap_or_default();
            let h = e.header().clone();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                data,
                xattrs,
            )
        })
        .collect()
}

fn names(entries: &[TarEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.0.as_str()).collect()
}

#[test]
fn layers_stack_and_changes_become_a_layer() {
    each_kind(|store| {
        let base = WriteView::new(store, &Snapshot::default()).unwrap();
        fs::create_dir(base.path().join("etc")).unwrap();
        fs::write(base.path().join("etc/keep"), b"1").unwrap();
        fs::write(base.path().join("etc/drop"), b"2").unwrap();
        let l1 = base.commit().unwrap();
        let s1 = Snapshot {
            layers: vec![l1.clone()],
        };

        let w = WriteView::new(store, &s1).unwrap();
        assert_eq!(fs::read(w.path().join("etc/keep")).unwrap(), b"1");
        fs::remove_file(w.path().join("etc/drop")).unwrap();
        fs::write(w.path().join("new"), b"3").unwrap();
        let l2 = w.commit().unwrap();
        let s2 = Snapshot {
            layers: vec![l1, l2.clone()],
        };

        let v = ReadView::new(store, &s2).unwrap();
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
    });
}

fn base_layer(store: &Store) -> LayerId {
    let w = WriteView::new(store, &Snapshot::default()).unwrap();
    let p = w.path();
    for d in ["etc", "dir/sub", "olddir/deep", "recreate", "links"] {
        fs::create_dir_all(p.join(d)).unwrap();
    }
    for (f, c) in [
        ("etc/keep", "1"),
        ("etc/drop", "2"),
        ("etc/chmod", "c"),
        ("dir/sub/file", "f"),
        ("dir/other", "o"),
        ("olddir/deep/a", "a"),
        ("recreate/x", "x"),
        ("recreate/y", "y"),
        ("links/a", "la"),
        ("links/single", "s"),
        ("f2dir", "file for now"),
    ] {
        fs::write(p.join(f), c).unwrap();
    }
    fs::set_permissions(p.join("etc/chmod"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::hard_link(p.join("links/a"), p.join("links/a2")).unwrap();
    std::os::unix::fs::symlink("etc/keep", p.join("sym")).unwrap();
    xattr::set(p.join("dir/other"), "user.note", b"lower").unwrap();
    w.commit().unwrap()
}

/// The same edits, whichever snapshotter shows the directory.
fn change(p: &Path) {
    fs::remove_file(p.join("etc/drop")).unwrap();
    // A lower directory replaced by a file.
    fs::remove_dir_all(p.join("olddir")).unwrap();
    fs::write(p.join("olddir"), b"now a file").unwrap();
    // A lower file replaced by a directory.
    fs::remove_file(p.join("f2dir")).unwrap();
    fs::create_dir(p.join("f2dir")).unwrap();
    fs::write(p.join("f2dir/inner"), b"i").unwrap();
    // Deleted and recreated: nothing of the old one may show (opaque).
    fs::remove_dir_all(p.join("recreate")).unwrap();
    fs::create_dir(p.join("recreate")).unwrap();
    fs::write(p.join("recreate/z"), b"z").unwrap();
    fs::set_permissions(p.join("etc/chmod"), fs::Permissions::from_mode(0o4755)).unwrap();
    // Hard links: a new name for a lower file, and a new pair. (A new name for one of the
    // lower pair a/a2 differs: overlay's copy-up breaks the pair, the copy keeps all three
    // names linked and so also writes a2.)
    fs::hard_link(p.join("links/single"), p.join("links/b")).unwrap();
    fs::write(p.join("links/n1"), b"new").unwrap();
    fs::hard_link(p.join("links/n1"), p.join("links/n2")).unwrap();
    // Symlinks: a new one, and a lower one pointed elsewhere.
    std::os::unix::fs::symlink("dir/other", p.join("newsym")).unwrap();
    fs::remove_file(p.join("sym")).unwrap();
    std::os::unix::fs::symlink("dir/sub/file", p.join("sym")).unwrap();
    // Content and xattr changes deep down.
    fs::write(p.join("dir/sub/file"), b"changed").unwrap();
    xattr::set(p.join("dir/other"), "user.note", b"upper").unwrap();
}

fn changes_as_layer(store: &Store) -> (LayerId, LayerId) {
    let l1 = base_layer(store);
    let w = WriteView::new(
        store,
        &Snapshot {
            layers: vec![l1.clone()],
        },
    )
    .unwrap();
    change(w.path());
    (l1, w.commit().unwrap())
}

#[test]
fn both_snapshotters_make_the_same_layer() {
    let mut results = Vec::new();
    for kind in KINDS {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_with(t.path(), kind).unwrap();
        let (l1, l2) = changes_as_layer(&store);
        let entries = tar_entries(&store, &l2);

        // The merged result is what the edits made.
        let v = ReadView::new(
            &store,
            &Snapshot {
                layers: vec![l1, l2],
            },
        )
        .unwrap();
        let p = v.path();
        assert!(!p.join("etc/drop").exists(), "{kind:?}");
        assert_eq!(fs::read(p.join("olddir")).unwrap(), b"now a file");
        assert_eq!(fs::read(p.join("f2dir/inner")).unwrap(), b"i");
        let mut rec: Vec<_> = fs::read_dir(p.join("recreate"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        rec.sort();
        assert_eq!(rec, ["z"], "{kind:?}");
        let md = fs::metadata(p.join("etc/chmod")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o4755, "{kind:?}");
        assert_eq!(
            fs::metadata(p.join("links/b")).unwrap().ino(),
            fs::metadata(p.join("links/single")).unwrap().ino(),
            "{kind:?}"
        );
        assert_eq!(
            fs::read_link(p.join("sym")).unwrap(),
            Path::new("dir/sub/file")
        );
        assert_eq!(fs::read(p.join("dir/sub/file")).unwrap(), b"changed");
        assert_eq!(
            xattr::get(p.join("dir/other"), "user.note")
                .unwrap()
                .unwrap(),
            b"upper"
        );
        assert_eq!(fs::read(p.join("etc/keep")).unwrap(), b"1");
        drop(v);
        results.push((kind, entries));
    }

    let (_, overlay) = &results[0];
    let (_, copy) = &results[1];
    assert_eq!(
        names(overlay),
        [
            "dir/",
            "dir/other",
            "dir/sub/",
            "dir/sub/file",
            "etc/",
            "etc/chmod",
            "etc/.wh.drop",
            "f2dir/",
            "f2dir/.wh..wh..opq",
            "f2dir/inner",
            "links/",
            "links/b",
            "links/n1",
            "links/n2",
            "links/single",
            "newsym",
            "olddir",
            "recreate/",
            "recreate/.wh..wh..opq",
            "recreate/z",
            "sym",
        ]
    );
    assert_eq!(
        names(copy),
        names(overlay),
        "same entries from both snapshotters"
    );
    for (o, c) in overlay.iter().zip(copy) {
        assert_eq!(o, c, "entry {} differs between overlay and copy", o.0);
    }
}

#[test]
fn a_chmod_keeps_the_lower_mtime_and_an_untouched_tree_gives_an_empty_layer() {
    each_kind(|store| {
        let l1 = base_layer(store);
        let snap = Snapshot {
            layers: vec![l1.clone()],
        };
        let lower_mtime = fs::symlink_metadata(store.layer_dir(&l1).join("etc/chmod"))
            .unwrap()
            .mtime();
        let w = WriteView::new(store, &snap).unwrap();
        fs::set_permissions(
            w.path().join("etc/chmod"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let l2 = w.commit().unwrap();
        let entries = tar_entries(store, &l2);
        assert_eq!(names(&entries), ["etc/", "etc/chmod"]);
        let md = fs::symlink_metadata(store.layer_dir(&l2).join("etc/chmod")).unwrap();
        assert_eq!(md.mtime(), lower_mtime);
        assert_eq!(md.mode() & 0o7777, 0o600);

        let untouched = WriteView::new(store, &snap).unwrap().commit().unwrap();
        assert!(tar_entries(store, &untouched).is_empty());
    });
}

#[test]
fn three_layers_stack_with_whiteouts_and_opaque_dirs() {
    each_kind(|store| {
        let (l1, l2) = changes_as_layer(store);
        let s2 = Snapshot {
            layers: vec![l1.clone(), l2.clone()],
        };
        // Changes on top of a stack of two: the lower view itself came from whiteouts.
        let w = WriteView::new(store, &s2).unwrap();
        assert!(!w.path().join("recreate/x").exists());
        fs::write(w.path().join("recreate/x"), b"back").unwrap();
        fs::remove_file(w.path().join("links/n2")).unwrap();
        let l3 = w.commit().unwrap();
        assert_eq!(
            names(&tar_entries(store, &l3)),
            ["links/", "links/.wh.n2", "recreate/", "recreate/x"]
        );
        let v = ReadView::new(
            store,
            &Snapshot {
                layers: vec![l1, l2, l3],
            },
        )
        .unwrap();
        assert_eq!(fs::read(v.path().join("recreate/x")).unwrap(), b"back");
        assert!(!v.path().join("recreate/y").exists());
        assert!(!v.path().join("links/n2").exists());
        assert_eq!(fs::read(v.path().join("links/n1")).unwrap(), b"new");
    });
}

#[test]
fn layers_written_by_one_snapshotter_read_the_same_with_the_other() {
    let t = tempfile::tempdir().unwrap();
    let copy = Store::open_with(t.path(), SnapshotterKind::Copy).unwrap();
    let overlay = Store::open_with(t.path(), SnapshotterKind::Overlay).unwrap();
    let (l1, l2) = changes_as_layer(&copy);
    let snap = Snapshot {
        layers: vec![l1, l2],
    };
    let a = ReadView::new(&copy, &snap).unwrap();
    let b = ReadView::new(&overlay, &snap).unwrap();
    assert_eq!(listing(a.path()), listing(b.path()));
}

/// Every path with its kind, mode and contents (or link target).
fn listing(root: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let data = if md.is_file() {
                fs::read(&p).unwrap()
            } else if md.file_type().is_symlink() {
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            if md.is_dir() {
                stack.push(p.clone());
            }
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((rel, md.mode(), data));
        }
    }
    out.sort();
    out
}

#[test]
fn open_picks_overlay_here_and_open_with_is_obeyed() {
    let t = tempfile::tempdir().unwrap();
    if std::env::var_os("KILN_SNAPSHOTTER").is_none() {
        // These machines run as root with overlayfs: the probe must succeed.
        assert_eq!(
            Store::open(t.path()).unwrap().snapshotter(),
            SnapshotterKind::Overlay
        );
        assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
    }
    let s = Store::open_with(t.path(), SnapshotterKind::Copy).unwrap();
    assert_eq!(s.snapshotter(), SnapshotterKind::Copy);
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
