//! The store in a user namespace, as rootless kiln runs it: overlay mounted with `userxattr`,
//! opaque directories as `user.overlay.opaque` (never in a layer tar, never taken from one),
//! device nodes skipped on import, owners kept as the namespace sees them, and an owner
//! outside the namespace's ids refused with the id and the range.
//!
//! The test re-runs itself (`--ignored`, one test) in a user and mount namespace that maps
//! uid 0 to the host's root (which runs the tests: CI is root) and uids 1-65535 to
//! 400001-465535, as rootless kiln maps the user and its subordinate ids.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use kiln_snapshot::*;

const DIR_ENV: &str = "KILN_SNAPSHOT_USERNS_TEST_DIR";

#[test]
fn the_store_works_in_a_user_namespace() {
    in_user_namespace("overlay");
}

/// As rootless kiln on a kernel without overlayfs in user namespaces (before 5.11): the same
/// store, the same layers, through fuse-overlayfs.
#[test]
fn the_store_works_in_a_user_namespace_with_fuse_overlayfs() {
    assert!(
        Command::new("fuse-overlayfs")
            .arg("--version")
            .output()
            .is_ok(),
        "fuse-overlayfs is required for this test (Debian package fuse-overlayfs)"
    );
    in_user_namespace("fuse-overlayfs");
}

/// Runs the inner test in a user namespace, with KILN_SNAPSHOTTER=`snapshotter` (the mount
/// type of the views it checks).
fn in_user_namespace(snapshotter: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test maps host ids into a user namespace: run it as root"
    );
    let t = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // `unshare` (util-linux) makes the namespaces, says so, and waits for the maps before it
    // runs the inner test.
    let mut child = Command::new("unshare")
        .args([
            "--user",
            "--mount",
            "--",
            "sh",
            "-c",
            "echo ready; read go && exec \"$0\" \"$@\"",
        ])
        .arg(&exe)
        .args(["--exact", "inner", "--ignored", "--nocapture"])
        .env(DIR_ENV, t.path())
        .env("KILN_SNAPSHOTTER", snapshotter)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run unshare (util-linux) to make a user namespace");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "unshare did not start");
    let pid = child.id();
    for map in ["uid_map", "gid_map"] {
        fs::write(format!("/proc/{pid}/{map}"), "0 0 1\n1 400001 65535\n").unwrap();
    }
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success() && rest.contains("1 passed"),
        "inner test failed: {status}\n{rest}\n{err}"
    );
    // On the host, the file the namespace's uid 1000 owns belongs to 400000 + 1000.
    let owned = t.path().join("owned");
    assert_eq!(fs::metadata(&owned).unwrap().uid(), 401000);
}

/// One entry of [`tar_of`]: (path, kind, uid, contents, pax xattrs).
type Entry<'a> = (
    &'a str,
    tar::EntryType,
    u64,
    &'a [u8],
    &'a [(&'a str, &'a [u8])],
);

/// A layer tar of `entries`.
fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, uid, data, xattrs) in entries {
        if !xattrs.is_empty() {
            let pax: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(*kind);
        h.set_path(path).unwrap();
        h.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(*uid);
        h.set_gid(*uid);
        h.set_size(data.len() as u64);
        if *kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_mtime(1000);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The file system type of the mount on `path` (/proc/self/mountinfo; the last one wins).
fn mount_type(path: &Path) -> String {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_str().unwrap();
    info.lines()
        .rev()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (pre.split_whitespace().nth(4)? == p).then(|| post.split_whitespace().next())?
        })
        .unwrap_or_else(|| panic!("{p} is not mounted"))
        .to_owned()
}

fn names_and_owners(bytes: &[u8]) -> Vec<(String, u64)> {
    tar::Archive::new(bytes)
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().uid().unwrap(),
            )
        })
        .collect()
}

#[test]
#[ignore = "run by the_store_works_in_a_user_namespace inside one"]
fn inner() {
    use tar::EntryType::{Char, Directory, Regular};
    let dir = std::env::var_os(DIR_ENV).expect("run by the_store_works_in_a_user_namespace");
    let dir = Path::new(&dir);
    let uid_map = fs::read_to_string("/proc/self/uid_map").unwrap();
    assert!(
        uid_map.contains("400001"),
        "not in the test's namespace: {uid_map}"
    );
    let store = Store::open(dir.join("store")).unwrap();
    assert_eq!(
        store.snapshotter(),
        SnapshotterKind::Overlay,
        "overlay must mount in a user namespace (with userxattr)"
    );
    let fs_type = match std::env::var("KILN_SNAPSHOTTER").as_deref() {
        Ok("fuse-overlayfs") => "fuse.fuse-overlayfs",
        _ => "overlay",
    };

    let base = store
        .import_tar_bytes(&tar_of(&[
            ("etc/", Directory, 0, b"", &[]),
            ("etc/old", Regular, 0, b"old", &[]),
        ]))
        .unwrap();
    // An opaque marker, a device node, an owner of 1000, and overlay bookkeeping that a
    // hostile tar carries: the bookkeeping is dropped, the device skipped.
    let top = store
        .import_tar_bytes(&tar_of(&[
            ("etc/", Directory, 0, b"", &[]),
            ("etc/.wh..wh..opq", Regular, 0, b"", &[]),
            ("etc/new", Regular, 1000, b"new", &[]),
            (
                "hide/",
                Directory,
                0,
                b"",
                &[("user.overlay.opaque", b"y"), ("user.keep", b"1")],
            ),
            ("dev/", Directory, 0, b"", &[]),
            ("dev/null", Char, 0, b"", &[]),
        ]))
        .unwrap();
    assert!(
        top.notes.iter().any(|n| n.contains("dev/null")),
        "{:?}",
        top.notes
    );
    let hide = store.layer_dir(&top.id).join("hide");
    assert_eq!(xattr::get(&hide, "user.overlay.opaque").unwrap(), None);
    assert_eq!(
        xattr::get(&hide, "user.keep").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        xattr::get(store.layer_dir(&top.id).join("etc"), "user.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );

    let snap = Snapshot {
        layers: vec![base.id.clone(), top.id.clone()],
    };
    {
        let view = ReadView::new(&store, &snap).unwrap();
        assert_eq!(mount_type(view.path()), fs_type);
        assert!(
            !view.path().join("etc/old").exists(),
            "the opaque dir hides the lower layer"
        );
        assert_eq!(fs::read(view.path().join("etc/new")).unwrap(), b"new");
        assert_eq!(
            fs::metadata(view.path().join("etc/new")).unwrap().uid(),
            1000
        );
        assert!(!view.path().join("dev/null").exists());
    }

    // Changes through a writable overlay: a directory replaced (opaque), a file chowned.
    let w = WriteView::new(&store, &snap).unwrap();
    assert_eq!(mount_type(w.path()), fs_type);
    fs::remove_dir_all(w.path().join("etc")).unwrap();
    fs::create_dir(w.path().join("etc")).unwrap();
    fs::write(w.path().join("etc/fresh"), b"f").unwrap();
    fs::write(w.path().join("owned"), b"o").unwrap();
    std::os::unix::fs::chown(w.path().join("owned"), Some(1000), Some(1000)).unwrap();
    let layer = w.commit().unwrap();
    let mut bytes = Vec::new();
    write_layer_tar(
        &store.layer_dir(&layer),
        Compression::Uncompressed,
        &mut bytes,
    )
    .unwrap();
    let entries = names_and_owners(&bytes);
    assert!(
        entries.iter().any(|(n, _)| n == "etc/.wh..wh..opq"),
        "{entries:?}"
    );
    assert!(entries.contains(&("owned".to_owned(), 1000)), "{entries:?}");
    assert!(
        !String::from_utf8_lossy(&bytes).contains("overlay."),
        "overlay bookkeeping leaked into the layer tar"
    );
    // For the outer test to check the host's view of the owner.
    fs::copy(store.layer_dir(&layer).join("owned"), dir.join("owned")).unwrap();
    std::os::unix::fs::chown(dir.join("owned"), Some(1000), Some(1000)).unwrap();

    // An owner the namespace does not map: the entry, the id and the range.
    let e = store
        .import_tar_bytes(&tar_of(&[("big", Regular, 70000, b"x", &[])]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"big\""), "{e}");
    assert!(
        e.contains("uid 70000 is outside the ids this user namespace maps (0-65535)"),
        "{e}"
    );
}
