//! Syncs on a real filesystem: a client directory, a mirror, and what lies around them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::{scan, Entry, Error, IgnoreSpec, Kind, Mirror, Stats};

/// Sets a path's mtime (not following a symlink) to a fixed, distinct time.
fn set_mtime(p: &Path, sec: i64) {
    let t = nix::sys::time::TimeSpec::new(sec, 123_456_789);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .expect("set mtime");
}

/// A client context: files, a nested dir, a symlink, a setuid file, fixed mtimes.
fn client(dir: &Path) {
    fs::create_dir_all(dir.join("src/deep")).expect("mkdir");
    fs::write(dir.join("a.txt"), "alpha").expect("write");
    fs::write(dir.join("src/main.rs"), "fn main() {}\n").expect("write");
    fs::write(dir.join("src/deep/data.bin"), vec![7u8; 70_000]).expect("write");
    fs::write(dir.join("tool"), "#!/bin/sh\n").expect("write");
    fs::set_permissions(dir.join("tool"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    fs::set_permissions(dir.join("src/deep"), fs::Permissions::from_mode(0o750)).expect("chmod");
    std::os::unix::fs::symlink("src/main.rs", dir.join("link")).expect("symlink");
    for (i, p) in ["a.txt", "src/main.rs", "src/deep/data.bin", "tool", "link"]
        .iter()
        .enumerate()
    {
        set_mtime(&dir.join(p), 1_600_000_000 + i as i64);
    }
    for (i, p) in ["src/deep", "src", ""].iter().enumerate() {
        set_mtime(&dir.join(p), 1_500_000_000 + i as i64);
    }
}

/// One whole sync of `src` into the mirror in `store`, as a client and daemon would run it:
/// the files the plan asks for are read from `src`.
fn sync(src: &Path, store: &Path, ignore: &IgnoreSpec) -> Result<(Vec<String>, Stats), Error> {
    let entries = scan(src, ignore)?;
    let mut mirror = Mirror::open(store)?;
    let mut plan = mirror.plan(entries)?;
    let asked = plan.send().to_vec();
    for p in &asked {
        let mut f = fs::File::open(src.join(p)).expect("client file");
        mirror.write_file(&mut plan, p, &mut f)?;
    }
    let stats = mirror.finish(plan)?;
    Ok((asked, stats))
}

/// Everything `scan` sees of a tree (no ignore), plus each file's bytes: equal for source and
/// mirror when the mirror is right.
fn snapshot(dir: &Path) -> Vec<(Entry, Option<Vec<u8>>)> {
    scan(dir, &IgnoreSpec::none())
        .expect("scan")
        .into_iter()
        .map(|e| {
            let bytes = (e.kind == Kind::File).then(|| fs::read(dir.join(&e.path)).expect("read"));
            // Owners are compared by the plan but not applied in the mirror.
            (
                Entry {
                    uid: 0,
                    gid: 0,
                    ..e
                },
                bytes,
            )
        })
        .collect()
}

#[test]
fn first_sync_sends_everything_and_the_mirror_equals_the_source() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    client(&src);
    let (asked, stats) = sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    assert_eq!(
        asked,
        ["a.txt", "src/deep/data.bin", "src/main.rs", "tool"],
        "every file asked, symlinks and dirs made from metadata"
    );
    assert_eq!((stats.files, stats.bytes), (4, 5 + 70_000 + 13 + 10));
    let tree = store.join("tree");
    assert_eq!(snapshot(&tree), snapshot(&src));
    assert_eq!(
        fs::metadata(tree.join("tool")).expect("stat").mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::read_link(tree.join("link")).expect("link").to_str(),
        Some("src/main.rs")
    );
    // Nothing changed: a no-op plan, nothing received.
    let (asked, stats) = sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    assert!(asked.is_empty(), "{asked:?}");
    assert_eq!((stats.files, stats.bytes), (0, 0));
    assert_eq!(snapshot(&tree), snapshot(&src));
}
