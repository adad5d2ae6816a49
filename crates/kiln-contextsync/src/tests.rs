//! Syncs on a real filesystem: a client directory, a mirror, and what lies around them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::{
    open_for_send, read_beside_ignore, read_ignore, scan, Entry, Error, IgnoreSpec, Kind, Mirror,
    Stats,
};

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
    let mut plan = mirror.plan(entries.clone())?;
    let asked = plan.send().to_vec();
    let declared = plan.send_bytes();
    for p in &asked {
        let mut f = open_for_send(src, &entries, p)?;
        mirror.write_file(&mut plan, p, &mut f)?;
    }
    let stats = mirror.finish(plan)?;
    assert_eq!(
        stats.bytes, declared,
        "bytes received are the bytes the plan announced"
    );
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

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).expect("stat").ino()
}

#[test]
fn an_edit_sends_that_file_only_and_unchanged_files_keep_their_inode() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    client(&src);
    sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    let tree = store.join("tree");
    let before = (
        ino(&tree.join("a.txt")),
        ino(&tree.join("src/deep/data.bin")),
    );
    let main_ino = ino(&tree.join("src/main.rs"));

    fs::write(src.join("src/main.rs"), "fn main() { println!(); }\n").expect("edit");
    let (asked, stats) = sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    assert_eq!(asked, ["src/main.rs"]);
    assert_eq!((stats.files, stats.bytes), (1, 26));
    assert_eq!(snapshot(&tree), snapshot(&src));
    assert_eq!(
        (
            ino(&tree.join("a.txt")),
            ino(&tree.join("src/deep/data.bin"))
        ),
        before,
        "unchanged files are not rewritten"
    );
    assert_ne!(
        ino(&tree.join("src/main.rs")),
        main_ino,
        "the edit is a new file"
    );
    // The engine's stat cache keys on inode, size, mtime and ctime: all kept.
    let ctime = |p: &str| {
        let md = fs::symlink_metadata(tree.join(p)).expect("stat");
        (
            md.ino(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec(),
        )
    };
    let kept = [
        ctime("a.txt"),
        ctime("src/deep/data.bin"),
        ctime("src/main.rs"),
    ];
    fs::write(src.join("tool"), "#!/bin/sh\nexit 0\n").expect("edit");
    let (asked, _) = sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    assert_eq!(asked, ["tool"]);
    assert_eq!(
        [
            ctime("a.txt"),
            ctime("src/deep/data.bin"),
            ctime("src/main.rs")
        ],
        kept
    );
}

#[test]
fn a_touch_alone_is_a_change_as_in_fsutil() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    client(&src);
    sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    set_mtime(&src.join("a.txt"), 1_700_000_000);
    let (asked, _) = sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    assert_eq!(asked, ["a.txt"]);
    // A mode change too.
    fs::set_permissions(src.join("src/main.rs"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let (asked, _) = sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    assert_eq!(asked, ["src/main.rs"]);
    assert_eq!(snapshot(&store.join("tree")), snapshot(&src));
}

#[test]
fn deleted_files_and_dirs_leave_the_mirror() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    client(&src);
    sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    fs::remove_file(src.join("a.txt")).expect("rm");
    fs::remove_dir_all(src.join("src/deep")).expect("rm");
    fs::remove_file(src.join("link")).expect("rm");
    let (asked, stats) = sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    assert!(asked.is_empty(), "{asked:?}");
    assert_eq!(stats.deleted, 4, "a.txt, link, src/deep/data.bin, src/deep");
    let tree = store.join("tree");
    assert!(!tree.join("a.txt").exists());
    assert!(!tree.join("src/deep").exists());
    assert!(fs::symlink_metadata(tree.join("link")).is_err());
    assert_eq!(snapshot(&tree), snapshot(&src), "dir mtimes set again too");
}

#[test]
fn kind_changes_replace_the_old_entry() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    client(&src);
    sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    // file -> dir, dir -> file, symlink -> file, file -> symlink
    fs::remove_file(src.join("a.txt")).expect("rm");
    fs::create_dir(src.join("a.txt")).expect("mkdir");
    fs::write(src.join("a.txt/inner"), "in").expect("write");
    fs::remove_dir_all(src.join("src/deep")).expect("rm");
    fs::write(src.join("src/deep"), "now a file").expect("write");
    fs::remove_file(src.join("link")).expect("rm");
    fs::write(src.join("link"), "was a link").expect("write");
    fs::remove_file(src.join("tool")).expect("rm");
    std::os::unix::fs::symlink("/etc/passwd", src.join("tool")).expect("symlink");
    let (asked, _) = sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    assert_eq!(asked, ["a.txt/inner", "link", "src/deep"]);
    assert_eq!(snapshot(&store.join("tree")), snapshot(&src));
}

#[test]
fn ignored_files_are_not_entries_and_reincluded_ones_are() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    fs::create_dir_all(src.join("build/keep")).expect("mkdir");
    fs::create_dir_all(src.join("node_modules/x")).expect("mkdir");
    fs::write(src.join("build/out.o"), "o").expect("write");
    fs::write(src.join("build/keep/me.txt"), "kept").expect("write");
    fs::write(src.join("node_modules/x/i.js"), "js").expect("write");
    fs::write(src.join("app.log"), "log").expect("write");
    fs::write(src.join("main.c"), "int main;").expect("write");
    fs::write(
        src.join(".dockerignore"),
        "build\n!build/keep/me.txt\nnode_modules\n*.log\n.dockerignore\n",
    )
    .expect("write");
    // No ignore file beside the Dockerfile: the context's .dockerignore.
    let ignore = read_ignore(&src, &src.join("Dockerfile")).expect("read");
    assert_eq!(ignore.file.as_deref(), Some(".dockerignore"));
    assert_eq!(ignore.beside_dockerfile, None);
    assert_eq!(
        ignore.patterns,
        [
            "build",
            "!build/keep/me.txt",
            "node_modules",
            "*.log",
            ".dockerignore"
        ]
    );
    let entries = scan(&src, &ignore).expect("scan");
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    // `build` and `build/keep` are excluded themselves (as in the engine's walk); the
    // ignore file is kept although it excludes itself: the daemon's frontend reads it.
    assert_eq!(paths, ["", ".dockerignore", "build/keep/me.txt", "main.c"]);

    let (asked, _) = sync(&src, &store, &ignore).expect("sync");
    assert_eq!(asked, [".dockerignore", "build/keep/me.txt", "main.c"]);
    let tree = store.join("tree");
    assert_eq!(
        fs::read_to_string(tree.join("build/keep/me.txt")).expect("read"),
        "kept"
    );
    assert!(!tree.join("build/out.o").exists());
    assert!(!tree.join("node_modules").exists());

    // The re-included file goes: so do the directories only it needed.
    fs::remove_file(src.join("build/keep/me.txt")).expect("rm");
    sync(&src, &store, &ignore).expect("sync");
    assert!(
        !tree.join("build").exists(),
        "implied dirs are removed with their last file"
    );

    // A Dockerfile's own ignore file is read beside it (BuildKit's `dockerfile` local), not
    // at the context root: a `Dockerfile.dockerignore` there is not the one of
    // `/elsewhere/Dockerfile` (it was, before).
    fs::write(src.join("Dockerfile.dockerignore"), "main.c\n").expect("write");
    let stray = read_ignore(&src, Path::new("/elsewhere/Dockerfile")).expect("read");
    assert_eq!(stray.file.as_deref(), Some(".dockerignore"));
    assert_eq!(stray.beside_dockerfile, None);
    fs::remove_file(src.join("Dockerfile.dockerignore")).expect("rm");

    fs::create_dir_all(src.join("docker")).expect("mkdir");
    fs::write(src.join("docker/app.Dockerfile"), "FROM scratch\n").expect("write");
    fs::write(src.join("docker/app.Dockerfile.dockerignore"), "main.c\n").expect("write");
    let own = read_ignore(&src, &src.join("docker/app.Dockerfile")).expect("read");
    assert_eq!(own.file, None);
    assert_eq!(
        own.beside_dockerfile.as_deref(),
        Some(src.join("docker/app.Dockerfile.dockerignore").as_path())
    );
    assert_eq!(own.patterns, ["main.c"]);
    assert_eq!(own.content, b"main.c\n");
    // The same file alone, for a client whose context the daemon fetches.
    assert_eq!(
        read_beside_ignore(&src.join("docker/app.Dockerfile")).expect("read"),
        Some(own.clone())
    );
    assert_eq!(
        read_beside_ignore(&src.join("Dockerfile")).expect("read"),
        None
    );
    let paths: Vec<String> = scan(&src, &own)
        .expect("scan")
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert!(!paths.contains(&"main.c".to_owned()), "{paths:?}");
    assert!(paths.contains(&"app.log".to_owned()), "{paths:?}");
    // The beside file is an ordinary entry: its patterns decide (the daemon gets its content).
    assert!(paths.contains(&".dockerignore".to_owned()), "{paths:?}");

    // Outside the context too, and a bad pattern there names it.
    let outside = tmp.path().join("df");
    fs::create_dir_all(&outside).expect("mkdir");
    fs::write(outside.join("Dockerfile.dockerignore"), "[\n").expect("write");
    let own = read_ignore(&src, &outside.join("Dockerfile")).expect("read");
    assert_eq!(
        own.beside_dockerfile.as_deref(),
        Some(outside.join("Dockerfile.dockerignore").as_path())
    );
    let e = scan(&src, &own).expect_err("bad pattern");
    assert!(
        e.to_string().contains(
            &outside
                .join("Dockerfile.dockerignore")
                .display()
                .to_string()
        ),
        "{e}"
    );

    let none = read_ignore(&src.join("build"), &src.join("build/Dockerfile")).expect("read");
    assert_eq!(none, IgnoreSpec::none());
}

#[test]
fn special_files_are_skipped_and_non_utf8_names_are_refused_unless_ignored() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).expect("mkdir");
    fs::write(src.join("f"), "f").expect("write");
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    let paths: Vec<String> = scan(&src, &IgnoreSpec::none())
        .expect("scan")
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(paths, ["", "f"]);

    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(src.join(bad), "x").expect("write");
    let err = scan(&src, &IgnoreSpec::none()).expect_err("non-UTF-8 name");
    assert!(matches!(err, Error::NonUtf8 { .. }), "{err}");
    assert!(err.to_string().contains("caf"), "names the file: {err}");
    scan(&src, &IgnoreSpec::from_patterns(vec!["caf*".into()])).expect("ignored");
}

fn file(path: &str, size: u64) -> Entry {
    Entry {
        path: path.into(),
        kind: Kind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size,
        mtime_sec: 1_600_000_000,
        mtime_nsec: 0,
        target: None,
    }
}

fn dir(path: &str) -> Entry {
    Entry {
        kind: Kind::Dir,
        mode: 0o755,
        ..file(path, 0)
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        kind: Kind::Symlink,
        mode: 0o777,
        target: Some(target.into()),
        ..file(path, 0)
    }
}

/// Runs one sync from hand-made entries; every asked file gets `size` bytes of `b'x'`.
fn sync_entries(store: &Path, entries: Vec<Entry>) -> Result<Stats, Error> {
    let mut mirror = Mirror::open(store)?;
    let mut plan = mirror.plan(entries)?;
    for p in plan.send().to_vec() {
        let size = plan.entry(&p).expect("planned").size;
        let bytes = vec![b'x'; size as usize];
        mirror.write_file(&mut plan, &p, &mut bytes.as_slice())?;
    }
    mirror.finish(plan)
}

/// A directory outside the mirror with a sentinel file, and a check that it is untouched.
struct Outside {
    dir: std::path::PathBuf,
}

impl Outside {
    fn new(base: &Path) -> Outside {
        let dir = base.join("outside");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("x"), "sentinel").expect("write");
        set_mtime(&dir.join("x"), 1_000_000_000);
        set_mtime(&dir, 1_000_000_000);
        Outside { dir }
    }

    fn assert_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["x"], "nothing made or removed outside the mirror");
        assert_eq!(
            fs::read_to_string(self.dir.join("x")).expect("read"),
            "sentinel"
        );
        assert_eq!(
            fs::metadata(self.dir.join("x")).expect("stat").mtime(),
            1_000_000_000
        );
        assert_eq!(
            fs::metadata(&self.dir).expect("stat").mtime(),
            1_000_000_000
        );
    }
}

#[test]
fn hostile_entries_never_touch_anything_outside_the_mirror() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let outside = Outside::new(tmp.path());
    let out = outside.dir.to_str().expect("utf-8 temp dir").to_owned();
    let cases: Vec<(Vec<Entry>, &str)> = vec![
        (vec![file("../outside/x", 3)], "../outside/x"),
        (vec![file(&format!("{out}/x"), 3)], "/outside/x"),
        (
            vec![dir("a"), file("a/../../outside/x", 3)],
            "a/../../outside/x",
        ),
        (vec![link("a", &out), file("a/x", 3)], "a/x"),
        (vec![link("a", "/"), dir("a/tmp")], "a/tmp"),
        (vec![file("a//x", 3)], "a//x"),
        (vec![file("a\0x", 3)], "a\\0x"),
        (vec![file("b", 1), file("a", 1)], "\"a\" comes after \"b\""),
        (vec![file("a", 1), file("a", 1)], "\"a\" comes after \"a\""),
        (vec![file(&"d/".repeat(2100), 1)], "longer than 4096"),
    ];
    for (entries, named) in cases {
        let err = sync_entries(&store, entries).expect_err(named);
        assert!(
            err.to_string().contains(named),
            "error names {named:?}: {err}"
        );
        outside.assert_untouched();
    }

    // Between two syncs a directory becomes a symlink to the outside: the vanished file in
    // it is deleted inside the mirror, before the link is made.
    sync_entries(&store, vec![dir("a"), file("a/x", 3)]).expect("sync");
    sync_entries(&store, vec![link("a", &out)]).expect("sync");
    outside.assert_untouched();
    let tree = store.join("tree");
    assert_eq!(
        fs::read_link(tree.join("a")).expect("link").to_str(),
        Some(out.as_str())
    );
    // And back: the link is replaced by a directory, never written through.
    sync_entries(&store, vec![dir("a"), file("a/x", 5)]).expect("sync");
    outside.assert_untouched();
    assert_eq!(fs::read(tree.join("a/x")).expect("read"), b"xxxxx");
    // A link left where a file's parent goes, with no entry for that parent (an implied dir).
    sync_entries(&store, vec![link("b", &out)]).expect("sync");
    sync_entries(&store, vec![file("b/x", 2)]).expect("sync");
    outside.assert_untouched();
    assert_eq!(fs::read(tree.join("b/x")).expect("read"), b"xx");

    // A path the plan did not ask for is refused.
    let mut mirror = Mirror::open(&store).expect("open");
    let mut plan = mirror.plan(vec![file("c", 1)]).expect("plan");
    let err = mirror
        .write_file(&mut plan, "../outside/x", &mut b"y".as_slice())
        .expect_err("not planned");
    assert!(matches!(err, Error::NotPlanned { .. }), "{err}");
    outside.assert_untouched();
}

#[test]
fn too_many_entries_are_refused() {
    let entries: Vec<Entry> = (0..11).map(|i| file(&format!("f{i:02}"), 0)).collect();
    let err = crate::entry::check_entries_max(&entries, 10).expect_err("over the limit");
    assert!(matches!(err, Error::TooManyEntries { limit: 10 }), "{err}");
    crate::entry::check_entries_max(&entries[..10], 10).expect("at the limit");
}

/// A reader that yields some bytes, then fails as a dropped connection would.
struct Broken(Vec<u8>);

impl std::io::Read for Broken {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "client went away",
            ));
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0.drain(..n);
        Ok(n)
    }
}

#[test]
fn a_transfer_cut_short_leaves_a_mirror_the_next_sync_repairs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    client(&src);
    sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    let tree = store.join("tree");
    let original = fs::read(src.join("a.txt")).expect("read");
    let original_md = fs::metadata(src.join("a.txt")).expect("stat");

    // a.txt and tool change; a.txt arrives, tool is cut short.
    fs::write(src.join("a.txt"), "ALPHA!").expect("write");
    fs::write(src.join("tool"), "#!/bin/sh\necho new\n").expect("write");
    {
        let mut mirror = Mirror::open(&store).expect("open");
        let mut plan = mirror
            .plan(scan(&src, &IgnoreSpec::none()).expect("scan"))
            .expect("plan");
        assert_eq!(plan.send(), ["a.txt", "tool"]);
        let mut f = fs::File::open(src.join("a.txt")).expect("open");
        mirror
            .write_file(&mut plan, "a.txt", &mut f)
            .expect("write");
        let err = mirror
            .write_file(&mut plan, "tool", &mut b"#!/bin".as_slice())
            .expect_err("short");
        assert!(
            matches!(&err, Error::SizeMismatch { path, declared: 19, received: 6 } if path == "tool"),
            "{err}"
        );
        let err = mirror
            .write_file(&mut plan, "tool", &mut Broken(b"#!".to_vec()))
            .expect_err("dropped");
        assert!(err.to_string().contains("client went away"), "{err}");
        assert!(err.to_string().contains("tool"), "{err}");
        let err = mirror.finish(plan).expect_err("tool never arrived");
        assert!(matches!(err, Error::Missing { missing: 1, .. }), "{err}");
        // The daemon gives up on this sync here (the mirror is dropped).
    }
    assert_eq!(
        fs::read(tree.join("tool")).expect("read"),
        b"#!/bin/sh\n",
        "old bytes kept"
    );
    assert_eq!(
        fs::read_dir(store.join("tmp")).expect("tmp").count(),
        0,
        "no partial file left"
    );

    // The client puts a.txt back as it was: its metadata is what the mirror recorded before,
    // but the mirror's copy changed in the sync that did not finish, so it is asked again.
    fs::write(src.join("a.txt"), &original).expect("write");
    let mtime = original_md.mtime();
    set_mtime(&src.join("a.txt"), mtime);
    assert_eq!(
        fs::metadata(src.join("a.txt")).expect("stat").mtime_nsec(),
        original_md.mtime_nsec()
    );
    let (asked, _) = sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    assert_eq!(asked, ["a.txt", "tool"]);
    assert_eq!(snapshot(&tree), snapshot(&src));
}

#[test]
fn a_damaged_record_rebuilds_the_mirror() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    client(&src);
    sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    fs::write(store.join("tree/stray"), "not the client's").expect("write");
    let record = fs::read(store.join("record")).expect("read");
    fs::write(store.join("record"), &record[..record.len() / 2]).expect("truncate");
    let (asked, _) = sync(&src, &store, &IgnoreSpec::none()).expect("sync");
    assert_eq!(asked.len(), 4, "everything again: {asked:?}");
    assert_eq!(
        snapshot(&store.join("tree")),
        snapshot(&src),
        "the stray file is gone"
    );
}

#[test]
fn deep_paths_cannot_make_the_daemon_allocate_without_bound() {
    // Each entry implies its own chain of ancestor directories.
    let deep = |i: usize| format!("x{i}/{}f", "d/".repeat(100));
    let entries: Vec<Entry> = (0..5).map(|i| file(&deep(i), 1)).collect();
    let implied = crate::mirror::with_implied_dirs(entries.clone(), 1000, 1 << 20)
        .expect("within the limits");
    assert_eq!(implied.len(), 5 * 102);
    let err = crate::mirror::with_implied_dirs(entries.clone(), 1000, 20_000)
        .expect_err("too many bytes");
    assert!(
        matches!(err, Error::PathsTooLong { limit: 20_000 }),
        "{err}"
    );
    let err = crate::mirror::with_implied_dirs(entries, 300, 1 << 20).expect_err("too many");
    assert!(matches!(err, Error::TooManyEntries { limit: 300 }), "{err}");
}

#[test]
fn the_client_sends_only_files_of_its_own_scan() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    client(&src);
    fs::write(src.join(".env"), "SECRET=1").expect("write");
    fs::write(tmp.path().join("outside"), "host file").expect("write");
    let entries = scan(&src, &IgnoreSpec::from_patterns(vec![".env".into()])).expect("scan");
    let mut bytes = String::new();
    std::io::Read::read_to_string(
        &mut open_for_send(&src, &entries, "src/main.rs").expect("listed file"),
        &mut bytes,
    )
    .expect("read");
    assert_eq!(bytes, "fn main() {}\n");
    // A daemon asking for an excluded file, a path outside, a directory or a symlink.
    for asked in [".env", "../outside", "src", "link", "src/../.env", "nope"] {
        let err = open_for_send(&src, &entries, asked).expect_err(asked);
        assert!(matches!(err, Error::NotListed { .. }), "{asked}: {err}");
        assert!(err.to_string().contains(asked), "{err}");
    }
    // A listed file replaced by a FIFO or a symlink since the scan: refused, never blocks.
    fs::remove_file(src.join("a.txt")).expect("rm");
    nix::unistd::mkfifo(
        &src.join("a.txt"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    let err = open_for_send(&src, &entries, "a.txt").expect_err("fifo");
    assert!(matches!(err, Error::NotAFile { .. }), "{err}");
    fs::remove_file(src.join("tool")).expect("rm");
    std::os::unix::fs::symlink(tmp.path().join("outside"), src.join("tool")).expect("symlink");
    let err = open_for_send(&src, &entries, "tool").expect_err("symlink");
    assert!(matches!(err, Error::NotAFile { .. }), "{err}");
}

#[test]
fn a_mirror_is_locked_while_it_is_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let try_lock = || {
        let f = fs::File::open(store.join("lock")).expect("lock file");
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
    };
    let mirror = Mirror::open(&store).expect("open");
    assert!(!try_lock(), "another opener waits while the mirror is open");
    drop(mirror);
    assert!(try_lock(), "free once dropped");
}

#[test]
fn files_arrive_in_chunks_and_a_long_or_short_one_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let mut mirror = Mirror::open(&store).expect("open");
    let mut plan = mirror
        .plan(vec![file("a", 6), file("b", 4), file("c", 2)])
        .expect("plan");
    assert_eq!(plan.send_bytes(), 12);
    let mut a = mirror.start_file(&mut plan, "a").expect("start");
    assert_eq!(a.path(), "a");
    a.write(b"abc").expect("chunk");
    a.write(b"def").expect("chunk");
    assert_eq!(mirror.commit_file(&mut plan, a).expect("commit"), 6);

    let mut b = mirror.start_file(&mut plan, "b").expect("start");
    b.write(b"xyz").expect("chunk");
    let err = b.write(b"zz").expect_err("too long");
    assert!(
        matches!(&err, Error::SizeMismatch { path, declared: 4, received: 5 } if path == "b"),
        "{err}"
    );
    drop(b);
    let mut c = mirror.start_file(&mut plan, "c").expect("start");
    c.write(b"c").expect("chunk");
    let err = mirror.commit_file(&mut plan, c).expect_err("too short");
    assert!(
        matches!(err, Error::SizeMismatch { received: 1, .. }),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(store.join("tmp")).expect("tmp").count(),
        0,
        "no temp file left"
    );
    assert_eq!(plan.received().files, 1);
    let err = mirror.finish(plan).expect_err("b and c missing");
    assert!(
        matches!(&err, Error::Missing { path, missing: 2 } if path == "b"),
        "{err}"
    );
    drop(mirror);

    // The next sync asks for all three again (a arrived, but its sync never finished).
    let mirror = Mirror::open(&store).expect("open");
    let plan = mirror
        .plan(vec![file("a", 6), file("b", 4), file("c", 2)])
        .expect("plan");
    assert_eq!(plan.send(), ["a", "b", "c"]);
}
